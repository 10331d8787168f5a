"""Dispatch capacity: reading the dispatcher roster, and the DispatchCapacity verdict, as tables."""

from __future__ import annotations

from typing import Any

import pytest

from comfyfleet.dispatch.registry import Endpoint
from comfyfleet.operator.capacity import (
    CONDITION,
    DispatcherRecord,
    DispatchSlots,
    FleetDemand,
    assess_capacity,
    capacity_conditions,
    capacity_news,
    fleet_demand,
    live_slots,
    parse_dispatcher,
)

NOW = 1_700_000_000.0


# -- the roster --------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("fields", "slots", "in_flight"),
    [
        ({b"slots": b"256", b"in_flight": b"3", b"last_tick": b"1700000000.5"}, 256, 3),
        ({"slots": "8", "in_flight": "0"}, 8, 0),
        ({b"slots": b"256.0"}, 256, 0),  # a float written by a careless writer still counts
        ({}, 0, 0),  # hash expired or not written yet: a member without slots offers none
        ({b"slots": b"lots", b"in_flight": b""}, 0, 0),  # unreadable: never a crash, never a guess
        ({b"slots": b"-5"}, 0, 0),
        ({b"slots": b"nan"}, 0, 0),
        ({b"slots": b"inf"}, 0, 0),
    ],
    ids=["bytes", "str", "float", "no-hash", "garbage", "negative", "nan", "inf"],
)
def test_parse_dispatcher(fields: dict[Any, Any], slots: int, in_flight: int) -> None:
    record = parse_dispatcher("d-1", NOW + 2, fields)
    assert record == DispatcherRecord("d-1", NOW + 2, slots, in_flight)


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        ([], DispatchSlots(0, 0, 0)),
        ([DispatcherRecord("a", NOW + 2, 256, 10), DispatcherRecord("b", NOW + 1, 256, 0)], DispatchSlots(2, 512, 10)),
        # A dispatcher whose score has passed is dead: its slots are gone even if its hash lingers.
        ([DispatcherRecord("a", NOW + 2, 256, 4), DispatcherRecord("dead", NOW - 0.1, 256, 9)],
         DispatchSlots(1, 256, 4)),
        ([DispatcherRecord("edge", NOW, 256, 0)], DispatchSlots(0, 0, 0)),  # score == now: dead
        ([DispatcherRecord("nohash", NOW + 2, 0, 0)], DispatchSlots(1, 0, 0)),  # live but no slots known
    ],
    ids=["none", "two-live", "one-dead", "expires-now", "live-without-hash"],
)
def test_live_slots_count_only_dispatchers_not_yet_expired(
    records: list[DispatcherRecord], expected: DispatchSlots
) -> None:
    assert live_slots(records, NOW) == expected


def endpoint(n: int, healthy: bool = True, prefetch: int = 0, pool: str = "p") -> Endpoint:
    return Endpoint(id=f"k8s:ns/{pool}-{n}", url=f"http://10.0.0.{n}:8188", pool=pool, healthy=healthy,
                    prefetch=prefetch)


def test_fleet_demand_counts_healthy_endpoints_of_every_pool_and_prefetch() -> None:
    endpoints = [
        endpoint(1), endpoint(2, healthy=False), endpoint(3, prefetch=1, pool="q"), endpoint(4, False, 1, "q"),
        Endpoint(id="url:http://local:8188", url="http://local:8188", healthy=True),  # `comfyfleet up` endpoint
    ]
    assert fleet_demand(endpoints) == FleetDemand(ready=3, prefetching=1)
    assert fleet_demand(endpoints).needed == 4


# -- the verdict -------------------------------------------------------------------------------

VERDICTS = [
    # (what, slots, demand, status, reason, words in the message)
    ("default chart, 12 pods", DispatchSlots(2, 512, 3), FleetDemand(12), "True", "EnoughDispatchSlots",
     ["512 dispatch slot(s) on 2 live dispatcher(s)", "12 ready pod(s)"]),
    ("exactly full", DispatchSlots(1, 8, 8), FleetDemand(8), "True", "EnoughDispatchSlots", ["needing 8"]),
    ("nothing ready, nobody dispatching", DispatchSlots(), FleetDemand(), "True", "EnoughDispatchSlots",
     ["0 ready pod(s)"]),
    ("old default slots, 12 pods", DispatchSlots(2, 8, 8), FleetDemand(12), "False", "NotEnoughDispatchSlots",
     ["12 ready pod(s) need 12", "2 live dispatcher(s) offer 8", "up to 4 pod(s) sit idle", "dispatcher.maxInFlight"]),
    ("prefetch doubles the need", DispatchSlots(1, 10, 0), FleetDemand(6, 6), "False", "NotEnoughDispatchSlots",
     ["6 ready pod(s) (6 prefetching) need 12", "up to 2 pod(s)"]),
    ("no dispatcher at all", DispatchSlots(), FleetDemand(3), "False", "NoDispatchers",
     ["no live dispatcher", "3 ready pod(s) get no jobs"]),
    ("live dispatchers without slots", DispatchSlots(1, 0, 0), FleetDemand(2), "False", "NotEnoughDispatchSlots",
     ["offer 0"]),
]


@pytest.mark.parametrize(("what", "slots", "demand", "status", "reason", "words"), VERDICTS,
                         ids=[v[0] for v in VERDICTS])
def test_assess_capacity(
    what: str, slots: DispatchSlots, demand: FleetDemand, status: str, reason: str, words: list[str]
) -> None:
    verdict = assess_capacity(slots, demand)
    assert (verdict.status, verdict.reason) == (status, reason)
    for word in words:
        assert word in verdict.message, verdict.message
    assert verdict.enough == (status == "True")
    assert verdict.shortfall == max(0, demand.needed - slots.slots)


def test_message_does_not_move_with_jobs_in_flight() -> None:
    """Status is patched only when it changes: in-flight counts would rewrite it every pass."""
    quiet = assess_capacity(DispatchSlots(2, 512, 0), FleetDemand(12))
    busy = assess_capacity(DispatchSlots(2, 512, 12), FleetDemand(12))
    assert quiet.message == busy.message


def test_condition_is_set_beside_the_others_and_keeps_its_transition_time() -> None:
    others = [{"type": "Ready", "status": "True", "reason": "AllReplicasReady", "message": "1/1",
               "lastTransitionTime": "2023-01-01T00:00:00Z"}]
    short = assess_capacity(DispatchSlots(1, 1, 0), FleetDemand(3))
    first = capacity_conditions(others, short, NOW, generation=4)
    assert first[0] == others[0]
    cond = next(c for c in first if c["type"] == CONDITION)
    assert (cond["status"], cond["reason"], cond["observedGeneration"]) == ("False", "NotEnoughDispatchSlots", 4)
    worse = assess_capacity(DispatchSlots(1, 1, 0), FleetDemand(5))
    later = next(c for c in capacity_conditions(first, worse, NOW + 60) if c["type"] == CONDITION)
    assert later["lastTransitionTime"] == cond["lastTransitionTime"]  # still False: no transition
    assert "5 ready pod(s)" in later["message"]
    fixed = next(c for c in capacity_conditions(first, assess_capacity(DispatchSlots(2, 512, 0), FleetDemand(5)),
                                                NOW + 120) if c["type"] == CONDITION)
    assert fixed["status"] == "True" and fixed["lastTransitionTime"] != cond["lastTransitionTime"]


ENOUGH = assess_capacity(DispatchSlots(2, 512, 0), FleetDemand(4))
SHORT = assess_capacity(DispatchSlots(1, 2, 0), FleetDemand(4))
SHORTER = assess_capacity(DispatchSlots(1, 2, 0), FleetDemand(6))
NOBODY = assess_capacity(DispatchSlots(), FleetDemand(4))


def condition_of(verdict: Any) -> list[dict[str, Any]]:
    return capacity_conditions(None, verdict, NOW)


@pytest.mark.parametrize(
    ("previous", "verdict", "news"),
    [
        (None, ENOUGH, False),  # a new pool with enough slots: nothing to shout about
        (None, SHORT, True),
        ([], NOBODY, True),
        (condition_of(ENOUGH), ENOUGH, False),
        (condition_of(ENOUGH), SHORT, True),  # a shortage starts
        (condition_of(SHORT), SHORT, False),  # ...and is not repeated every pass
        (condition_of(SHORT), SHORTER, True),  # ...unless its numbers change
        (condition_of(SHORT), NOBODY, True),
        (condition_of(SHORT), ENOUGH, True),  # back to enough: said once
    ],
    ids=["new-ok", "new-short", "new-nobody", "steady-ok", "starts", "steady-short", "worse", "all-gone", "recovers"],
)
def test_capacity_news(previous: list[dict[str, Any]] | None, verdict: Any, news: bool) -> None:
    assert capacity_news(previous, verdict) is news
