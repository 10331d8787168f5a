"""The one-call submit (record + event + RQ job + queue entry + wake) against a real Redis and RQ itself."""

from __future__ import annotations

import asyncio
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
import redis.asyncio as aioredis
from rq import Queue
from rq.job import Job as RQJob
from rq.job import JobStatus

from comfyfleet.dispatch.rqconf import SERIALIZER
from comfyfleet.dispatch.service import Dispatcher
from comfyfleet.fairuse.limits import DEPTH_ESTIMATE_MS, FairUse, LimitExceeded, Limits
from comfyfleet.jobs.model import Job, JobState
from comfyfleet.settings import DispatchSettings
from comfyfleet.store.jobevents import job_payload, stream_key
from comfyfleet.store.jobrepo import encode_fields

# Stamps RQ takes from the clock: equal in shape, not in value.
CLOCK_FIELDS = {b"created_at", b"enqueued_at"}


@pytest.fixture
def dispatcher(redis_server) -> Dispatcher:
    settings = DispatchSettings(redis_url=redis_server.url, redis_prefix="q" + uuid.uuid4().hex[:8])
    return Dispatcher(redis.Redis.from_url(redis_server.url), settings)


def make_job(**kw) -> Job:
    return Job(owner="alice", workflow={"1": {"class_type": "SaveImage", "inputs": {}}}, **kw)


def test_submit_writes_the_rq_job_rq_itself_writes(dispatcher):
    ours, reference = make_job(priority=7), make_job(priority=7)
    dispatcher.submit(ours)
    dispatcher.enqueue(reference)  # RQ's own Queue.enqueue_job
    conn = dispatcher.conn
    mine, theirs = conn.hgetall(f"rq:job:{ours.id}"), conn.hgetall(f"rq:job:{reference.id}")
    assert set(mine) == set(theirs)
    swap = {reference.id.encode(): ours.id.encode()}
    for name in set(theirs) - CLOCK_FIELDS - {b"data", b"description"}:
        assert mine[name] == swap.get(theirs[name], theirs[name]), name
    for name in (b"description", b"data"):
        theirs_here = zlib.decompress(theirs[name]) if name == b"data" else theirs[name]
        mine_here = zlib.decompress(mine[name]) if name == b"data" else mine[name]
        assert mine_here == theirs_here.replace(reference.id.encode(), ours.id.encode()), name
    queue = dispatcher.queue(7)
    assert queue.key.encode() in conn.smembers(Queue.redis_queues_keys)
    assert queue.get_job_ids() == [ours.id, reference.id]
    fetched = RQJob.fetch(ours.id, connection=conn, serializer=SERIALIZER)
    assert fetched.get_status() is JobStatus.QUEUED
    assert fetched.func_name == "comfyfleet.dispatch.runner.run_job" and list(fetched.args) == [ours.id]
    assert fetched.timeout == ours.timeout_seconds + 60 and fetched.retries_left == ours.max_attempts - 1
    assert fetched.enqueued_at is not None and fetched.origin == queue.name


def test_submit_records_announces_and_wakes_in_one_call(dispatcher):
    conn = dispatcher.conn
    pubsub = conn.pubsub()
    pubsub.subscribe(dispatcher.keys.wake)
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    job = make_job()
    stored, created = dispatcher.submit(job)
    assert created and stored.id == job.id
    assert dispatcher.repo.require(job.id).state is JobState.QUEUED
    assert dispatcher.stats().waiting == 1 and dispatcher.stats().created == 1
    events = conn.xrange(stream_key(dispatcher.keys, job.id))
    assert [e[1][b"event"] for e in events] == [b"state"]
    assert events[0][1][b"job"].decode() == job_payload(stored), "the event carries the job as job_payload does"
    message = pubsub.get_message(timeout=5)
    assert message is not None and message["data"] == b"1"
    pubsub.close()


def test_an_idempotent_repeat_queues_nothing_more(dispatcher):
    first, again = make_job(idempotency_key="k1"), make_job(idempotency_key="k1")
    assert dispatcher.submit(first)[1]
    job, created = dispatcher.submit(again)
    assert not created and job.id == first.id
    assert dispatcher.queue(first.priority).get_job_ids() == [first.id]
    assert not dispatcher.conn.exists(f"rq:job:{again.id}", dispatcher.keys.job(again.id))


def test_async_submit_matches_the_blocking_one(dispatcher, redis_server):
    async def go() -> tuple[Job, bool, Job, bool]:
        aconn = aioredis.Redis.from_url(redis_server.url)
        try:
            dispatcher.conn.script_flush()  # the async client loads the script itself on a miss
            a, created = await dispatcher.submit_async(aconn, make_job(idempotency_key="same"))
            b, again = await dispatcher.submit_async(aconn, make_job(idempotency_key="same"))
            return a, created, b, again
        finally:
            await aconn.aclose()

    a, created, b, again = asyncio.run(go())
    assert created and not again and b.id == a.id
    assert dispatcher.queue(a.priority).get_job_ids() == [a.id]
    assert RQJob.fetch(a.id, connection=dispatcher.conn, serializer=SERIALIZER).get_status() is JobStatus.QUEUED
    assert dispatcher.repo.require(a.id).state is JobState.QUEUED


def fair(dispatcher: Dispatcher, **limits: int) -> FairUse:
    return FairUse(dispatcher.conn, dispatcher.keys, Limits(**limits), dispatcher.repo.get_many)


def written(dispatcher: Dispatcher, job: Job) -> bool:
    return bool(dispatcher.conn.exists(dispatcher.keys.job(job.id), f"rq:job:{job.id}"))


def test_submit_with_fair_use_admits_and_writes_in_one_call(dispatcher):
    limits = fair(dispatcher, in_flight_per_user=5)

    def attempt(_: int) -> Job | None:
        job = make_job()
        try:
            dispatcher.submit(job, limits)
        except LimitExceeded:
            assert not written(dispatcher, job), "a refused submit writes nothing"
            return None
        return job

    with ThreadPoolExecutor(max_workers=16) as pool:
        created = [j for j in pool.map(attempt, range(40)) if j is not None]
    assert len(created) == 5
    assert sorted(dispatcher.queue(5).get_job_ids()) == sorted(j.id for j in created)
    assert limits.in_flight("alice") == 5


def test_each_limit_refuses_by_name_and_reserves_nothing(dispatcher):
    limits = fair(dispatcher, queue_depth=2, submissions_per_minute=3)
    dispatcher.submit(make_job(), limits)
    dispatcher.submit(make_job(), limits)
    with pytest.raises(LimitExceeded) as refused:
        dispatcher.submit(third := make_job(), limits)
    assert refused.value.limit == "max_queue_depth" and refused.value.retry_after == 30
    assert not written(dispatcher, third)
    per_minute = fair(dispatcher, submissions_per_minute=3)
    dispatcher.submit(make_job(), per_minute)  # the third in the minute (the refused one was not counted)
    with pytest.raises(LimitExceeded) as refused:
        dispatcher.submit(make_job(), per_minute)
    assert refused.value.limit == "max_submissions_per_minute_per_user" and 1 <= refused.value.retry_after <= 60
    per_pool = fair(dispatcher, queue_depth_per_pool=1)
    dispatcher.submit(make_job(pool="gpu"), per_pool)
    with pytest.raises(LimitExceeded) as refused:
        dispatcher.submit(make_job(pool="gpu"), per_pool)
    assert refused.value.limit == "max_queue_depth_per_pool" and "pool gpu" in str(refused.value)


def test_the_queue_depth_is_an_estimate_between_exact_counts_and_exact_at_the_limit(dispatcher):
    limits = fair(dispatcher, queue_depth=4)
    queue = dispatcher.queue(5)
    for _ in range(2):
        dispatcher.submit(make_job(), limits)
    conn = dispatcher.conn
    assert conn.get(limits.depth_key) == b"2" and 0 < conn.pttl(limits.depth_key) <= DEPTH_ESTIMATE_MS
    # what enters a queue without an admit is seen at the next exact count, not by the estimate
    conn.rpush(queue.key, "outside-1")
    dispatcher.submit(make_job(), limits)
    assert conn.get(limits.depth_key) == b"3"
    # the estimate reaches the limit: the count is exact (4 queued) and refuses
    with pytest.raises(LimitExceeded) as refused:
        dispatcher.submit(extra := make_job(), limits)
    assert (refused.value.limit, refused.value.value) == ("max_queue_depth", 4) and not written(dispatcher, extra)
    # jobs that left the queue are seen at once near the limit: the estimate never refuses on its own
    conn.lrem(queue.key, 0, "outside-1")
    conn.lpop(queue.key)
    dispatcher.submit(make_job(), limits)
    assert conn.get(limits.depth_key) == b"3"
    # a lapsed estimate is counted again from the queues
    conn.delete(limits.depth_key)
    dispatcher.submit(make_job(), limits)
    assert conn.get(limits.depth_key) == b"4"


def test_finished_jobs_are_pruned_when_the_set_looks_full(dispatcher):
    limits = fair(dispatcher, in_flight_per_user=1)
    first, _ = dispatcher.submit(make_job(), limits)
    with pytest.raises(LimitExceeded) as refused:
        dispatcher.submit(make_job(), limits)
    assert refused.value.limit == "max_jobs_in_flight_per_user"
    dispatcher.cancel(first.id)
    second, created = dispatcher.submit(make_job(), limits)  # the cancelled job is pruned, the new one admitted
    assert created and limits.in_flight("alice") == 1


def test_an_idempotent_repeat_gives_its_reservation_back(dispatcher, redis_server):
    limits = fair(dispatcher, in_flight_per_user=10, submissions_per_minute=10)

    async def go() -> tuple[Job, bool]:
        aconn = aioredis.Redis.from_url(redis_server.url)
        try:
            return await dispatcher.submit_async(aconn, make_job(idempotency_key="k"), limits)
        finally:
            await aconn.aclose()

    first, _ = dispatcher.submit(make_job(idempotency_key="k"), limits)
    again, created = asyncio.run(go())
    assert not created and again.id == first.id
    conn = dispatcher.conn
    assert [m.decode() for m in conn.zrange(limits.in_flight_key("alice"), 0, -1)] == [first.id]
    assert [m.decode() for m in conn.zrange(limits.rate_key("alice"), 0, -1)] == [first.id]


def test_records_and_rq_jobs_of_one_shape_keep_their_own_owner_and_text(dispatcher):
    text = 'a "quoted" café 😀 \\ line\nbreak'
    jobs = [Job(owner=owner, workflow={"1": {"class_type": "CLIPTextEncode", "inputs": {"text": text}}})
            for owner in ("alice", "zoë 😀", "bob")]
    for job in jobs:
        dispatcher.submit(job)
    for job in jobs:
        stored = dispatcher.repo.require(job.id)
        assert stored.owner == job.owner and stored.workflow == job.workflow
        assert dispatcher.conn.hget(dispatcher.keys.job(job.id), "owner") == encode_fields(job)["owner"].encode()
        rq_job = RQJob.fetch(job.id, connection=dispatcher.conn, serializer=SERIALIZER)
        assert rq_job.description == f"comfyfleet job {job.id} for {job.owner}" and list(rq_job.args) == [job.id]


def test_an_id_rq_would_refuse_is_refused_before_anything_is_written(dispatcher):
    job = make_job(id="not:an/rq-id")
    with pytest.raises(ValueError, match="Job ID"):
        dispatcher.submit(job)
    assert not written(dispatcher, job) and dispatcher.queue(job.priority).count == 0
