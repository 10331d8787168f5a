"""Dispatch capacity: do the live dispatchers have a slot for every pod that is ready? (no I/O)

A dispatcher process runs at most its cap of jobs at once (COMFYFLEET_MAX_IN_FLIGHT). Each live one
keeps a hash `{prefix}:dispatcher:{name}` (`slots` = its cap, `in_flight`, `last_tick`) and a
member `name` in the sorted set `{prefix}:dispatchers`, scored with the unix time after which it
counts as dead (it renews the score every second or two). The operator reads both through
`publish.read_dispatchers` and decides here.

Slots are shared by every endpoint in the registry, whatever its pool, so the comparison is
fleet-wide: total live slots against every ready endpoint, plus one more for each ready endpoint
whose pool prefetches (a prefetched job is in flight on its dispatcher while it waits in the pod's
queue). When the fleet needs more than the dispatchers have, pods sit idle while jobs wait, and
every pool says so: a `DispatchCapacity` condition with status False, a warning log line and event
when that starts or its numbers change, and the `comfyfleet_operator_dispatch_*` gauges.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from comfyfleet.dispatch.registry import Endpoint
from comfyfleet.operator.models import ConditionStatus, set_condition

CONDITION = "DispatchCapacity"
ENOUGH = "EnoughDispatchSlots"
NOT_ENOUGH = "NotEnoughDispatchSlots"
NO_DISPATCHERS = "NoDispatchers"
# What an SRE turns to get more slots (chart values, and the process setting they become).
REMEDY = "raise dispatcher.replicas or dispatcher.maxInFlight (COMFYFLEET_MAX_IN_FLIGHT)"


@dataclass(frozen=True)
class DispatcherRecord:
    """One member of the dispatcher roster as read from Redis.

    Attributes:
        name: the dispatcher's name (member of `{prefix}:dispatchers`).
        expires_at: its score: unix time after which it counts as dead.
        slots: its cap of jobs in flight; 0 when its hash is gone or unreadable.
        in_flight: jobs it runs now (0 when unknown).
    """

    name: str
    expires_at: float
    slots: int = 0
    in_flight: int = 0


def _count(value: Any) -> int:
    """A non-negative integer from a Redis hash field (bytes or str); anything unreadable is 0."""
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0
    return int(number) if math.isfinite(number) and number > 0 else 0


def parse_dispatcher(name: str, expires_at: float, fields: Mapping[Any, Any]) -> DispatcherRecord:
    """A roster member and its hash (bytes or str keys, as redis-py returns them) as a record."""
    by_name = {k.decode() if isinstance(k, bytes) else str(k): v for k, v in fields.items()}
    return DispatcherRecord(name, float(expires_at), _count(by_name.get("slots")), _count(by_name.get("in_flight")))


@dataclass(frozen=True)
class DispatchSlots:
    """What the live dispatchers offer: how many of them, their slots and jobs in flight in all."""

    dispatchers: int = 0
    slots: int = 0
    in_flight: int = 0


def live_slots(records: Iterable[DispatcherRecord], now: float) -> DispatchSlots:
    """Sum slots and jobs in flight over the dispatchers whose lease on the roster runs past now."""
    live = [r for r in records if r.expires_at > now]
    return DispatchSlots(len(live), sum(r.slots for r in live), sum(r.in_flight for r in live))


@dataclass(frozen=True)
class FleetDemand:
    """What the ready endpoints need: one slot each, and one more for each that prefetches."""

    ready: int = 0
    prefetching: int = 0

    @property
    def needed(self) -> int:
        return self.ready + self.prefetching


def fleet_demand(endpoints: Iterable[Endpoint]) -> FleetDemand:
    """Slots wanted by every healthy endpoint in the registry (every pool, static endpoints too)."""
    ready = [e for e in endpoints if e.healthy]
    return FleetDemand(len(ready), sum(1 for e in ready if int(e.prefetch) > 0))


@dataclass(frozen=True)
class CapacityVerdict:
    """The DispatchCapacity condition of every pool, with the numbers behind it."""

    status: ConditionStatus
    reason: str
    message: str
    slots: DispatchSlots
    demand: FleetDemand

    @property
    def enough(self) -> bool:
        return self.status == "True"

    @property
    def shortfall(self) -> int:
        """Ready endpoints (or prefetch places) no dispatch slot can serve."""
        return max(0, self.demand.needed - self.slots.slots)


def _pods(demand: FleetDemand) -> str:
    text = f"{demand.ready} ready pod(s)"
    return f"{text} ({demand.prefetching} prefetching)" if demand.prefetching else text


def assess_capacity(slots: DispatchSlots, demand: FleetDemand) -> CapacityVerdict:
    """Compare the live dispatch slots with what the ready endpoints need.

    Messages carry only numbers that change with the fleet (not jobs in flight), so the condition
    is rewritten when the fleet changes, not on every pass.
    """
    offer = f"{slots.slots} dispatch slot(s) on {slots.dispatchers} live dispatcher(s)"
    if demand.needed > 0 and slots.dispatchers == 0:
        message = f"no live dispatcher: {_pods(demand)} get no jobs; is `comfyfleet dispatcher` running?"
        return CapacityVerdict("False", NO_DISPATCHERS, message, slots, demand)
    if demand.needed > slots.slots:
        short = demand.needed - slots.slots
        message = (f"{_pods(demand)} need {demand.needed} dispatch slot(s) but {offer} offer {slots.slots}: "
                   f"up to {short} pod(s) sit idle while jobs wait; {REMEDY}")
        return CapacityVerdict("False", NOT_ENOUGH, message, slots, demand)
    message = f"{offer} for {_pods(demand)} needing {demand.needed}"
    return CapacityVerdict("True", ENOUGH, message, slots, demand)


def capacity_conditions(
    conditions: Sequence[Mapping[str, Any]] | None,
    verdict: CapacityVerdict,
    now: datetime | float,
    generation: int | None = None,
) -> list[dict[str, Any]]:
    """The pool's conditions with DispatchCapacity set from the verdict."""
    return set_condition(list(conditions or []), CONDITION, verdict.status, verdict.reason, verdict.message, now,
                         generation)


def capacity_news(previous: Sequence[Mapping[str, Any]] | None, verdict: CapacityVerdict) -> bool:
    """True when the verdict is worth a log line and an event: it differs from the pool's last one.

    A shortage is news when it starts and whenever its numbers change; the return to enough slots
    is news once; a steady state (short or not) is not repeated on every pass.
    """
    last = next((c for c in previous or [] if c.get("type") == CONDITION), None)
    if last is None:
        return not verdict.enough
    if (last.get("status"), last.get("reason")) != (verdict.status, verdict.reason):
        return True
    return not verdict.enough and last.get("message") != verdict.message
