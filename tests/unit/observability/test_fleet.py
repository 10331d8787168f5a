"""Fleet figures computed at scrape time: endpoints by pool and state, queue and oldest job per pool."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from comfyfleet.dispatch.selection import Candidate
from comfyfleet.observability.fleet import endpoints_by_pool, queue_by_pool

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


def cand(id_: str, pool: str, healthy: bool = True, busy: bool = False) -> Candidate:
    return Candidate(id=id_, pool=pool, healthy=healthy, busy=busy, checkpoints=frozenset(), loras=frozenset())


def queued(pool: str | None, age: float | None) -> tuple[str | None, datetime | None]:
    return pool, (NOW - timedelta(seconds=age) if age is not None else None)


def test_endpoints_by_pool_and_state_with_zeros():
    counts = endpoints_by_pool([cand("a", "sdxl"), cand("b", "sdxl", busy=True), cand("c", "flux", healthy=False),
                                cand("d", "flux", healthy=False, busy=True)])
    assert counts == {("sdxl", "ready"): 1, ("sdxl", "busy"): 1, ("sdxl", "unhealthy"): 0,
                      ("flux", "ready"): 0, ("flux", "busy"): 0, ("flux", "unhealthy"): 2}


def test_queue_and_oldest_job_per_pool_with_bounded_labels():
    # only the head of each queue is read in full: the others come without a creation time
    jobs = [queued("sdxl", 30), queued("sdxl", None), queued(None, 12), queued("typo-pool", 99), queued("typo-2", 1)]
    q = queue_by_pool(jobs, {"sdxl", "flux"}, NOW)
    assert q.count == {"sdxl": 2, "flux": 0, "any": 1, "other": 2}
    assert q.oldest_age_seconds == {"sdxl": 30.0, "flux": 0.0, "any": 12.0, "other": 99.0}


def test_an_empty_queue_reports_zero_for_every_known_pool():
    q = queue_by_pool([], {"sdxl"}, NOW)
    assert q.count == {"sdxl": 0, "any": 0}
    assert q.oldest_age_seconds == {"sdxl": 0.0, "any": 0.0}
