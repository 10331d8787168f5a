"""The job event transport over a real redis-server: ordered ids, resume, gaps, a lost subscription."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import uuid

import pytest
import redis
import redis.asyncio as aioredis

from comfyfleet.api.events import follow_job
from comfyfleet.jobs.model import Job, JobState
from comfyfleet.keys import Keys
from comfyfleet.store import jobevents
from comfyfleet.store.jobevents import EventHub, hub_channel, job_channel
from comfyfleet.store.jobrepo import JobRepo
from tests.support.procs import ManagedProcess, free_port


@pytest.fixture
def keys() -> Keys:
    return Keys(prefix="ev" + uuid.uuid4().hex[:8])


@pytest.fixture
async def started_hub(redis_server, keys):
    """A started EventHub and a blocking client of the same Redis (for the writes)."""
    aconn = aioredis.Redis.from_url(redis_server.url)
    hub = EventHub(aconn, keys)
    await hub.start()
    try:
        yield redis.Redis.from_url(redis_server.url), hub
    finally:
        await hub.stop()
        await aconn.aclose()


def write(conn: redis.Redis, keys: Keys, job: Job, event: str = "progress") -> None:
    JobRepo(conn, keys).publish(job, event)


def job_at(value: int, state: JobState = JobState.RUNNING) -> Job:
    job = Job(id="job-1", owner="alice", workflow={"1": {"class_type": "X", "inputs": {"big": "x" * 1000}}},
              state=state)
    job.progress.value = value
    return job


async def test_a_feed_resumes_after_an_id_and_never_repeats(started_hub, keys):
    conn, hub = started_hub
    for i in range(3):
        write(conn, keys, job_at(i))
    stored = conn.xrange(keys.events("job-1"))
    assert len(stored) == 3 and b"workflow" not in stored[0][1][b"job"], "events never carry the workflow"
    second = jobevents.parse_event_id(stored[1][0].decode())
    async with hub.follow("job-1", after=second) as feed:
        write(conn, keys, job_at(3))
        write(conn, keys, job_at(4, JobState.SUCCEEDED), "state")
        got = []
        while (item := await feed.next(5)) is not None:
            got.append((item.event, item.job.progress.value))
            if item.job.state.is_terminal:
                break
    assert got == [("progress", 2), ("progress", 3), ("state", 4)], got
    assert not feed.gap and hub.feed_count == 0
    assert item.job.workflow == {}


async def test_a_trimmed_stream_is_reported_as_a_gap(redis_server, keys, monkeypatch):
    monkeypatch.setattr(jobevents, "STREAM_MAXLEN", 5)
    conn = redis.Redis.from_url(redis_server.url)
    aconn = aioredis.Redis.from_url(redis_server.url)
    hub = EventHub(aconn, keys)
    write(conn, keys, job_at(0))
    first = jobevents.parse_event_id(conn.xrange(keys.events("job-1"))[0][0].decode())
    for i in range(1, 400):  # MAXLEN ~ trims whole nodes (100 entries): write enough to drop the first
        write(conn, keys, job_at(i))
    events, gap = await hub.read_after("job-1", first)
    assert gap and events and events[0].job.progress.value > 1
    events, gap = await hub.read_after("gone-job", (1, 0))
    assert gap and events == [], "an expired stream is a gap too"
    await aconn.aclose()


async def test_a_lost_subscription_is_renewed_and_the_feed_catches_up(redis_server, keys):
    conn = redis.Redis.from_url(redis_server.url)
    aconn = aioredis.Redis.from_url(redis_server.url)
    hub = EventHub(aconn, keys)
    await hub.start()
    try:
        async with hub.follow("job-1") as feed:
            assert await _until_subscribers(conn, keys, "job-1", 1) == 1
            killed = 0
            for client in conn.client_list():
                if int(client.get("sub", 0)) > 0:
                    killed += conn.client_kill_filter(_id=client["id"])
            assert killed == 1
            write(conn, keys, job_at(1))  # published while nobody listens: only the stream has it
            write(conn, keys, job_at(2, JobState.SUCCEEDED), "state")
            got = []
            while (item := await asyncio.wait_for(feed.next(10), 15)) is not None:
                got.append(item.job.progress.value)
                if item.job.state.is_terminal:
                    break
        assert got == [1, 2], got
        for _ in range(100):  # bounded: the events may have come from the stream before the loss was noticed
            if hub.reconnects:
                break
            await asyncio.sleep(0.05)
        assert hub.reconnects == 1
    finally:
        await hub.stop()
        await aconn.aclose()


def _subscribers(conn: redis.Redis, keys, job_id: str) -> int:
    return int(conn.pubsub_numsub(job_channel(keys, job_id))[0][1])


async def _until_subscribers(conn: redis.Redis, keys, job_id: str, count: int) -> int:
    """The job channel's subscriber count once it is `count` (bounded: a follow asks for its channel without
    waiting for Redis, and the hub's loop unsubscribes an idle one within its 5 s read timeout)."""
    for _ in range(200):
        if (found := _subscribers(conn, keys, job_id)) == count:
            return found
        await asyncio.sleep(0.05)
    return _subscribers(conn, keys, job_id)


async def test_a_process_subscribes_only_to_the_jobs_it_follows(started_hub, keys):
    conn, hub = started_hub
    assert _subscribers(conn, keys, "job-1") == 0, "nobody follows it yet"
    async with hub.follow("job-1") as first, hub.follow("job-1") as second:
        assert await _until_subscribers(conn, keys, "job-1", 1) == 1, "one subscription for both feeds"
        assert _subscribers(conn, keys, "job-2") == 0, "the events of other jobs never reach this process"
        write(conn, keys, job_at(1))
        a, b = await first.next(10), await second.next(10)
        assert a is not None and b is not None and a.id == b.id
    assert await _until_subscribers(conn, keys, "job-1", 0) == 0, "unsubscribed once its last feed ended"
    # Followed again at once after the last feed ended: its events still arrive, before and after the hub's loop
    # has swept the idle channel.
    for progress in (2, 3):
        async with hub.follow("job-1") as again:
            write(conn, keys, job_at(progress))
            item = await again.next(10)
        assert item is not None and item.job.progress.value == progress


async def test_the_hub_starts_while_redis_is_down_and_subscribes_once_it_answers(tmp_path, keys):
    port = free_port()
    aconn = aioredis.Redis.from_url(f"redis://127.0.0.1:{port}/0")
    hub = EventHub(aconn, keys)
    await hub.start(wait_seconds=0.2)  # nothing listens on the port yet: the hub starts anyway
    server = ManagedProcess([shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
                             "127.0.0.1", "--save", "", "--dir", str(tmp_path)], log_path=tmp_path / "redis.log")
    try:
        conn = redis.Redis(port=port)
        for _ in range(150):  # a bounded async poll: the hub retries every 0.5 s
            with contextlib.suppress(redis.ConnectionError):
                if conn.pubsub_numsub(hub_channel(keys))[0][1] == 1:
                    break
            await asyncio.sleep(0.1)
        async with hub.follow("job-1") as feed:
            write(conn, keys, job_at(1, JobState.SUCCEEDED), "state")
            item = await feed.next(10)
        assert item is not None and item.job.progress.value == 1
    finally:
        await hub.stop()
        await aconn.aclose()
        server.stop()


async def _follow_values(hub: EventHub, read_job, finish) -> list[tuple[str, str, int]]:
    """(id, event, progress) of what a fresh follow (no Last-Event-ID) yields; `finish` then ends the job."""
    got: list[tuple[str, str, int]] = []
    async for item in follow_job(hub, "job-1", read_job, None, lifetime=10):
        if item is None:
            continue
        got.append((item.id, item.event, item.job.progress.value))
        if len(got) == 1:
            finish()
        if item.job.state.is_terminal:
            break
    return got


def _in_order(got: list[tuple[str, str, int]]) -> None:
    ids = [jobevents.parse_event_id(i) or (0, 0) for i, _, _ in got]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), got
    values = [v for _, _, v in got]
    assert values == sorted(values), f"progress went backwards: {got}"


async def test_a_fresh_follow_never_sends_a_snapshot_newer_than_the_events_after_it(started_hub, keys):
    """The job moves while a stream starts (a loaded API process): the first `state` the client gets and the
    events after it stay in order. Before the fix the id came from the stream and the job from the record,
    read one after the other, so a job that moved in between was sent as 57 % and then 0, 14, 28, ..."""
    conn, hub = started_hub
    for i in range(3):
        write(conn, keys, job_at(i))

    async def read_job() -> Job:  # the record, read while the job goes on writing events
        for i in range(3, 6):
            write(conn, keys, job_at(i))
        return job_at(5)

    got = await _follow_values(hub, read_job, lambda: write(conn, keys, job_at(6, JobState.SUCCEEDED), "state"))
    _in_order(got)
    assert got[0][1] == "state" and got[-1] == (got[-1][0], "state", 6), got
    newest = conn.xrevrange(keys.events("job-1"), count=1)[0][0].decode()
    assert got[-1][0] == newest


async def test_a_fresh_follow_of_a_job_without_stored_events_reads_the_record(started_hub, keys):
    """An empty (expired) stream: the snapshot comes from the record; an event written while the record was
    read replaces it, so what follows is never older than what was sent."""
    conn, hub = started_hub

    async def quiet_record() -> Job:
        return job_at(4)

    got = await _follow_values(hub, quiet_record, lambda: write(conn, keys, job_at(7, JobState.SUCCEEDED),
                                                                "state"))
    assert got[0] == ("0-0", "state", 4) and got[1][1:] == ("state", 7), got
    conn.delete(keys.events("job-1"))

    async def moving_record() -> Job:
        write(conn, keys, job_at(5))
        return job_at(4)

    got = await _follow_values(hub, moving_record, lambda: write(conn, keys, job_at(8, JobState.SUCCEEDED),
                                                                 "state"))
    _in_order(got)
    assert [v for _, _, v in got] == [5, 8], got


async def test_the_hub_stops_even_while_its_connection_is_being_renewed(redis_server, keys):
    """redis-py can swallow a cancel that lands while it reconnects a killed connection; stop() still ends the
    hub's task (before, an API process shutting down at that moment hung: seen at one of these delays)."""
    conn = redis.Redis.from_url(redis_server.url)
    for delay in (0, 0.001, 0.005, 0.02, 0.2, 0.55):
        aconn = aioredis.Redis.from_url(redis_server.url)
        hub = EventHub(aconn, keys)
        await hub.start()
        try:
            async with hub.follow("job-1"):
                await _until_subscribers(conn, keys, "job-1", 1)
                for client in conn.client_list():
                    if int(client.get("sub", 0)) > 0:
                        conn.client_kill_filter(_id=client["id"])
                await asyncio.sleep(delay)
            await asyncio.wait_for(hub.stop(), 10)
            assert hub._task is not None and hub._task.done(), f"still running after a kill and {delay} s"
        finally:
            await aconn.aclose()
