"""The one-call submit (record + event + RQ job + queue entry + wake) against a real Redis and RQ itself."""

from __future__ import annotations

import asyncio
import uuid
import zlib

import pytest
import redis
import redis.asyncio as aioredis
from rq import Queue
from rq.job import Job as RQJob
from rq.job import JobStatus

from comfyfleet.dispatch.rqconf import SERIALIZER
from comfyfleet.dispatch.service import Dispatcher
from comfyfleet.jobs.model import Job, JobState
from comfyfleet.settings import DispatchSettings
from comfyfleet.store.jobevents import stream_key

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
