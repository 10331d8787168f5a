"""Fair-use building blocks against a real Redis: limits under concurrency, known pools, the queue-timeout sweep."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import redis

from comfyfleet.dispatch.service import Dispatcher
from comfyfleet.fairuse.limits import FairUse, LimitExceeded, Limits
from comfyfleet.fairuse.pools import DECLARATION_TTL_SECONDS, declare_pool, known_pools
from comfyfleet.fairuse.queue_timeout import sweep_queue_timeouts
from comfyfleet.jobs.model import ErrorCode, Job, JobState, utcnow
from comfyfleet.settings import DispatchSettings


@pytest.fixture
def dispatcher(redis_server) -> Dispatcher:
    settings = DispatchSettings(redis_url=redis_server.url, redis_prefix="f" + uuid.uuid4().hex[:8])
    return Dispatcher(redis.Redis.from_url(redis_server.url), settings)


def parked(owner: str = "alice", **kw) -> Job:
    return Job(owner=owner, workflow={"1": {"class_type": "SaveImage", "inputs": {}}}, **kw)


def test_concurrent_submits_never_exceed_the_in_flight_limit(dispatcher):
    fair = FairUse(dispatcher.conn, dispatcher.keys, Limits(in_flight_per_user=5), dispatcher.repo.get_many)

    def attempt(_: int) -> bool:
        job = parked()
        try:
            fair.admit(job)
        except LimitExceeded:
            return False
        dispatcher.submit(job)
        return True

    with ThreadPoolExecutor(max_workers=16) as pool:
        admitted = sum(pool.map(attempt, range(40)))
    assert admitted == 5
    assert fair.in_flight("alice") == 5


def test_finished_jobs_leave_the_count_and_refusals_reserve_nothing(dispatcher):
    fair = FairUse(dispatcher.conn, dispatcher.keys, Limits(in_flight_per_user=1, submissions_per_minute=3),
                   dispatcher.repo.get_many)
    first = parked()
    fair.admit(first)
    dispatcher.submit(first)
    with pytest.raises(LimitExceeded) as refused:
        fair.admit(parked())
    assert refused.value.limit == "max_jobs_in_flight_per_user"
    dispatcher.cancel(first.id)
    fair.admit(second := parked())  # the cancelled job no longer counts
    dispatcher.submit(second)
    dispatcher.cancel(second.id)
    fair.admit(parked())  # the third submission in the minute
    fair.release(refused_job := parked())  # releasing what was never reserved is harmless
    with pytest.raises(LimitExceeded) as refused:
        fair.admit(refused_job)  # in flight is full again (the third is reserved, not yet written)
    assert refused.value.limit == "max_jobs_in_flight_per_user"
    rate = FairUse(dispatcher.conn, dispatcher.keys, Limits(submissions_per_minute=3), dispatcher.repo.get_many)
    with pytest.raises(LimitExceeded) as refused:
        rate.admit(parked())  # the fourth in a minute (the refused one above gave its place back)
    assert refused.value.limit == "max_submissions_per_minute_per_user" and 1 <= refused.value.retry_after <= 60


def test_known_pools_are_registered_or_recently_declared(dispatcher):
    dispatcher.registry.upsert("url:http://a:8188", "http://a:8188", "gpu-a")
    declare_pool(dispatcher, "scaled-to-zero")
    declare_pool(dispatcher, "long-gone", now=time.time() - DECLARATION_TTL_SECONDS - 1)
    assert known_pools(dispatcher) == {"gpu-a", "scaled-to-zero"}


def test_sweep_fails_only_jobs_past_their_queue_deadline(dispatcher):
    old = parked(queue_timeout_seconds=10, created_at=utcnow() - timedelta(seconds=11))
    young = parked(queue_timeout_seconds=10)
    default = parked(created_at=utcnow() - timedelta(seconds=11))  # None: the server default applies
    for j in (old, young, default):
        dispatcher.submit(j)
    assert sweep_queue_timeouts(dispatcher, default_seconds=3600) == [old.id]
    failed = dispatcher.repo.require(old.id)
    assert failed.state is JobState.FAILED and failed.error.code is ErrorCode.QUEUE_TIMEOUT
    assert old.id not in dispatcher.queue(old.priority).get_job_ids()
    assert {dispatcher.repo.require(j.id).state for j in (young, default)} == {JobState.QUEUED}
    assert sweep_queue_timeouts(dispatcher, default_seconds=3600) == [], "idempotent"
    # a server whose default is 5 s: its first sweep reads every queued job
    assert sweep_queue_timeouts(dispatcher, default_seconds=5, full=True) == [default.id]


def index_of(dispatcher) -> dict[str, float]:
    return {k.decode(): v for k, v in dispatcher.conn.zrange(dispatcher.keys.queue_deadlines, 0, -1, withscores=True)}


def test_the_sweep_reads_only_due_jobs_from_the_index_and_keeps_it_to_the_waiting_ones(dispatcher):
    young = parked(queue_timeout_seconds=10)
    default = parked()  # the server default applies: indexed at the earliest any default allows
    for j in (young, default):
        dispatcher.submit(j)
    created = {j.id: j.created_at.timestamp() for j in (young, default)}
    assert index_of(dispatcher) == {young.id: created[young.id] + 10, default.id: created[default.id] + 5}
    assert sweep_queue_timeouts(dispatcher, default_seconds=3600) == []
    later = utcnow() + timedelta(seconds=11)
    assert sweep_queue_timeouts(dispatcher, default_seconds=3600, now=later) == [young.id]
    assert dispatcher.repo.require(young.id).state is JobState.FAILED
    assert index_of(dispatcher) == {default.id: created[default.id] + 3600}, "moved to its real deadline"
    # a job queued without an entry (before the index existed) is seen by a full sweep, which indexes it
    dispatcher.conn.zrem(dispatcher.keys.queue_deadlines, default.id)
    assert sweep_queue_timeouts(dispatcher, default_seconds=3600, now=later + timedelta(hours=1)) == []
    assert dispatcher.repo.require(default.id).state is JobState.QUEUED
    assert sweep_queue_timeouts(dispatcher, default_seconds=3600, now=later, full=True) == []
    assert index_of(dispatcher) == {default.id: created[default.id] + 3600}
    dispatcher.cancel(default.id)
    assert index_of(dispatcher) == {}, "a cancelled job leaves the index"
    assert dispatcher.repo.require(default.id).state is JobState.CANCELLED
