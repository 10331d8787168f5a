"""Fleet figures read from Redis at scrape time: queue per pool and its oldest job, endpoints by pool and state.

Gauges of shared state: every API replica reports the same values, so dashboards and alerts aggregate them
with max(), not sum().
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from comfyfleet.dispatch.selection import Candidate
from comfyfleet.dispatch.service import Dispatcher
from comfyfleet.jobs.model import JobState
from comfyfleet.keys import PRIORITIES

ENDPOINT_STATES = ("ready", "busy", "unhealthy")
ANY_POOL = "any"  # pool label of queued jobs that any pool may run
OTHER_POOL = "other"  # pool label of queued jobs naming a pool no endpoint is registered for (bounded)
# Job records fetched per Redis round trip while reading the queue.
SCAN_CHUNK = 500


@dataclass(frozen=True)
class QueueByPool:
    count: dict[str, int]
    oldest_age_seconds: dict[str, float]


def endpoint_state(c: Candidate) -> str:
    return "unhealthy" if not c.healthy else ("busy" if c.busy else "ready")


def endpoints_by_pool(candidates: Iterable[Candidate]) -> dict[tuple[str, str], int]:
    """(pool, state) -> count, with a zero for every state of every known pool (series do not vanish)."""
    counts: dict[tuple[str, str], int] = {}
    for c in candidates:
        for state in ENDPOINT_STATES:
            counts.setdefault((c.pool, state), 0)
        counts[(c.pool, endpoint_state(c))] += 1
    return counts


def pool_label_of(pool: str | None, known_pools: set[str]) -> str:
    return ANY_POOL if pool is None else (pool if pool in known_pools else OTHER_POOL)


def queue_by_pool(entries: Iterable[tuple[str | None, datetime | None]], known_pools: set[str],
                  now: datetime) -> QueueByPool:
    """Waiting jobs and the age of the oldest per pool label (any / a known pool / other).

    entries: (requested pool, created_at) of every waiting job; created_at may be None for jobs known not to be
    the oldest of their pool (only the head of each queue is read in full).
    """
    count: dict[str, int] = {p: 0 for p in known_pools}
    oldest: dict[str, float] = {p: 0.0 for p in known_pools}
    for pool, created_at in entries:
        label = pool_label_of(pool, known_pools)
        count[label] = count.get(label, 0) + 1
        age = max(0.0, (now - created_at).total_seconds()) if created_at is not None else 0.0
        oldest[label] = max(oldest.get(label, 0.0), age)
    count.setdefault(ANY_POOL, 0)
    oldest.setdefault(ANY_POOL, 0.0)
    return QueueByPool(count, oldest)


def waiting_jobs(dispatcher: Dispatcher, known_pools: set[str]) -> list[tuple[str | None, datetime | None]]:
    """(pool, created_at) of every job waiting in a priority queue or parked (its pool has no healthy endpoint).

    Cheap enough for a scrape: the compact records (no workflow) of all of them, the full record only of the
    first job of each pool label in each queue (queues are FIFO, so that one is the oldest there).
    """
    groups = [dispatcher.queue(p).get_job_ids() for p in PRIORITIES] + [dispatcher.scheduler.parked_ids()]
    entries: list[tuple[str | None, str]] = []
    heads: set[str] = set()
    for ids in groups:
        seen: set[str] = set()
        for start in range(0, len(ids), SCAN_CHUNK):
            chunk = ids[start:start + SCAN_CHUNK]
            for job_id, info in zip(chunk, dispatcher.repo.compact_many(chunk), strict=True):
                if info is None or "corrupt" in info or JobState(info["state"]).is_terminal:
                    continue
                pool = info.get("pool")
                entries.append((pool, job_id))
                label = pool_label_of(pool, known_pools)
                if label not in seen:
                    seen.add(label)
                    heads.add(job_id)
    head_ids = sorted(heads)
    created = {j.id: j.created_at for j in dispatcher.repo.get_many(head_ids) if j is not None}
    return [(pool, created.get(job_id)) for pool, job_id in entries]


def fleet_families() -> dict[str, GaugeMetricFamily | CounterMetricFamily]:
    """Fresh, empty families of everything FleetCollector exports (its describe(), and the catalogue)."""
    g, c = GaugeMetricFamily, CounterMetricFamily
    return {
        "queue_waiting": g("comfyfleet_queue_waiting", "Jobs waiting in the queue, by priority", labels=["priority"]),
        "active": g("comfyfleet_jobs_active", "Jobs running on an endpoint"),
        "retrying": g("comfyfleet_jobs_retrying", "Jobs waiting for a retry"),
        "finished": c("comfyfleet_jobs_finished", "Jobs that reached a final state (all time, from Redis)",
                      labels=["state"]),
        "created": c("comfyfleet_jobs_created", "Jobs accepted (all time, from Redis)"),
        "endpoints": g("comfyfleet_endpoints", "ComfyUI endpoints by pool and state", labels=["pool", "state"]),
        "queue_jobs": g("comfyfleet_queue_jobs", "Jobs waiting in the queue, by the pool they asked for (any: every "
                        "pool may run them; other: a pool with no endpoint)", labels=["pool"]),
        "oldest": g("comfyfleet_queue_oldest_job_age_seconds", "Age of the oldest job waiting in the queue (0 when "
                    "none), by the pool it asked for", labels=["pool"]),
    }


def queue_per_pool(dispatcher: Dispatcher) -> QueueByPool:
    """Queued jobs and the oldest one's age per pool label, read from Redis now."""
    from comfyfleet.jobs.model import utcnow

    pools = {c.pool for c in dispatcher.registry.candidates()}
    return queue_by_pool(waiting_jobs(dispatcher, pools), pools, utcnow())


class FleetCollector:
    """Queue depth, job totals and endpoint states, straight from Redis on each scrape."""

    def __init__(self, dispatcher: Dispatcher):
        self.dispatcher = dispatcher

    def describe(self) -> Iterable[Metric]:
        return list(fleet_families().values())

    def collect(self) -> Iterator[Metric]:
        from comfyfleet.jobs.model import utcnow

        f = fleet_families()
        stats = self.dispatcher.stats()
        for priority, n in stats.waiting_by_priority.items():
            f["queue_waiting"].add_metric([str(priority)], n)
        f["active"].add_metric([], stats.active)
        f["retrying"].add_metric([], stats.retrying)
        for state, value in (("succeeded", stats.completed), ("failed", stats.failed), ("cancelled", stats.cancelled)):
            f["finished"].add_metric([state], value)
        f["created"].add_metric([], stats.created)
        candidates = self.dispatcher.registry.candidates()
        for (pool, state), n in sorted(endpoints_by_pool(candidates).items()):
            f["endpoints"].add_metric([pool, state], n)
        pools = {c.pool for c in candidates}
        per_pool = queue_by_pool(waiting_jobs(self.dispatcher, pools), pools, utcnow())
        for pool in sorted(per_pool.count):
            f["queue_jobs"].add_metric([pool], per_pool.count[pool])
            f["oldest"].add_metric([pool], per_pool.oldest_age_seconds[pool])
        yield from f.values()
