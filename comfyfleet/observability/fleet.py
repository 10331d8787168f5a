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
from comfyfleet.jobs.model import Job
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


def queue_by_pool(jobs: Iterable[Job | None], known_pools: set[str], now: datetime) -> QueueByPool:
    """Queued jobs and the age of the oldest per pool label (any / a known pool / other)."""
    count: dict[str, int] = {p: 0 for p in known_pools}
    oldest: dict[str, float] = {p: 0.0 for p in known_pools}
    for job in jobs:
        if job is None or job.state.is_terminal:
            continue
        pool = ANY_POOL if job.pool is None else (job.pool if job.pool in known_pools else OTHER_POOL)
        count[pool] = count.get(pool, 0) + 1
        age = max(0.0, (now - job.created_at).total_seconds())
        oldest[pool] = max(oldest.get(pool, 0.0), age)
    count.setdefault(ANY_POOL, 0)
    oldest.setdefault(ANY_POOL, 0.0)
    return QueueByPool(count, oldest)


def read_queued_jobs(dispatcher: Dispatcher) -> Iterator[Job | None]:
    for priority in PRIORITIES:
        ids = dispatcher.queue(priority).get_job_ids()
        for start in range(0, len(ids), SCAN_CHUNK):
            yield from dispatcher.repo.get_many(ids[start:start + SCAN_CHUNK])


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
    return queue_by_pool(read_queued_jobs(dispatcher), pools, utcnow())


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
        per_pool = queue_by_pool(read_queued_jobs(self.dispatcher), {c.pool for c in candidates}, utcnow())
        for pool in sorted(per_pool.count):
            f["queue_jobs"].add_metric([pool], per_pool.count[pool])
            f["oldest"].add_metric([pool], per_pool.oldest_age_seconds[pool])
        yield from f.values()
