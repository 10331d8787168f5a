"""The operator's side of the dispatch registry: publish serving pods, withdraw the rest, read leases.

Synchronous Redis calls (the same `Registry` and scheduler lock the RQ workers use); the handlers
run them in threads. Every method touches only endpoints of one pool in one namespace
(`k8s:<ns>/...` with that pool), never static or other pools' endpoints.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import redis

from comfyfleet.dispatch.registry import Endpoint
from comfyfleet.dispatch.service import Dispatcher
from comfyfleet.keys import Keys
from comfyfleet.operator.capacity import DispatcherRecord, FleetDemand, fleet_demand, parse_dispatcher
from comfyfleet.operator.pods import ENDPOINT_SOURCE, endpoint_prefix

log = logging.getLogger(__name__)


class PoolPublisher:
    """Registry operations for the pods of one ComfyUIWorker."""

    def __init__(self, dispatcher: Dispatcher, namespace: str, pool: str):
        self.dispatcher = dispatcher
        self.registry = dispatcher.registry
        self.namespace = namespace
        self.pool = pool

    def published(self) -> dict[str, Endpoint]:
        """This pool's endpoints in the registry, by id."""
        prefix = endpoint_prefix(self.namespace)
        return {e.id: e for e in self.registry.endpoints() if e.id.startswith(prefix) and e.pool == self.pool}

    def publish(self, serving: dict[str, str], known: dict[str, Endpoint], prefetch: int = 0) -> dict[str, Endpoint]:
        """Upsert each serving pod (id -> URL) that is new, moved or has another prefetch than the
        pool's spec.prefetch; return the endpoints to probe."""
        for endpoint_id, url in serving.items():
            current = known.get(endpoint_id)
            if current is None or current.url != url or current.prefetch != prefetch:
                self.registry.upsert(endpoint_id, url, pool=self.pool, source=ENDPOINT_SOURCE, prefetch=prefetch)
                if current is None:
                    log.info("published %s at %s in pool %s", endpoint_id, url, self.pool)
        return self.refresh(serving)

    def withdraw(self, endpoint_ids: Iterable[str]) -> None:
        """Remove endpoints: the dispatcher stops sending them jobs (a running job keeps its lease)."""
        for endpoint_id in endpoint_ids:
            self.registry.remove(endpoint_id)
            log.info("withdrew %s from pool %s", endpoint_id, self.pool)

    def withdraw_if_idle(self, endpoint_id: str) -> bool:
        """Withdraw an endpoint only if it holds no lease, atomically with respect to dispatch.

        Claims lease pods under the scheduler's lock, so checking the lease and removing the
        endpoint under the same lock means no job can land on the pod between the check and its
        deletion: a pod chosen for scale-down is either still idle and gone from dispatch, or busy
        and kept (False).
        """
        with self.dispatcher.scheduler.lock():
            if self.registry.leases([endpoint_id]):
                return False
            self.registry.remove(endpoint_id)
        log.info("withdrew idle %s from pool %s for scale-down", endpoint_id, self.pool)
        return True

    def leases(self, endpoint_ids: list[str]) -> dict[str, str]:
        """endpoint id -> job id, for the pods running a job now."""
        return self.registry.leases(endpoint_ids)

    def refresh(self, endpoint_ids: Iterable[str]) -> dict[str, Endpoint]:
        """Re-read endpoints after probing (health and failure counts).

        Through `Registry.endpoints` (via `published`), which skips half-written hashes (a late
        `note_assignment` on a withdrawn endpoint) that `Registry.get` would fail to parse.
        """
        wanted = set(endpoint_ids)
        return {i: e for i, e in self.published().items() if i in wanted}

    def queued_by_pool(self) -> dict[str | None, int]:
        return self.dispatcher.queued_by_pool()

    def withdraw_all(self) -> list[str]:
        """Remove every endpoint of the pool (the ComfyUIWorker is being deleted)."""
        ids = sorted(self.published())
        self.withdraw(ids)
        return ids

    def fleet_demand(self) -> FleetDemand:
        """Dispatch slots every ready endpoint of the registry needs (all pools share the dispatchers)."""
        return fleet_demand(self.registry.endpoints())

    def dispatchers(self, now: float) -> list[DispatcherRecord]:
        return read_dispatchers(self.dispatcher.conn, self.dispatcher.keys, now)


def read_dispatchers(conn: redis.Redis, keys: Keys, now: float) -> list[DispatcherRecord]:
    """The roster members whose expiry score is after now, each with its hash.

    Dead members are not read (however many a crashed fleet left behind); `capacity.live_slots`
    applies the same rule again to what it is given.
    """
    members: list[tuple[bytes, float]] = list(
        conn.zrangebyscore(keys.dispatchers, f"({now!r}", "+inf", withscores=True))  # type: ignore[arg-type]
    names = [member.decode() for member, _ in members]
    with conn.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hgetall(keys.dispatcher(name))
        hashes = pipe.execute()
    return [parse_dispatcher(name, float(score), fields)
            for name, (_, score), fields in zip(names, members, hashes, strict=True)]
