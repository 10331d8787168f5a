"""The outbox and deliverer over a real Redis and a loopback receiver, without the rest of the stack:
entries written with the job's state are delivered once; an entry whose state write never happened is not."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
import redis.asyncio as aioredis

from comfyfleet.jobs.model import Job, JobState, WebhookSpec
from comfyfleet.jobs.states import transition
from comfyfleet.keys import Keys
from comfyfleet.net.policy import UrlPolicy
from comfyfleet.store.jobrepo import JobRepo
from comfyfleet.webhooks.deliverer import RetryPolicy, WebhookDeliverer
from comfyfleet.webhooks.outbox import WebhookKeys, counters, delivery_id, queue_webhooks
from comfyfleet.webhooks.signing import verify
from tests.support.receiver import Receiver

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.stop()


@pytest.fixture
async def parts(redis_server) -> AsyncIterator[tuple[JobRepo, WebhookDeliverer]]:  # noqa: ANN001
    conn = redis.Redis.from_url(redis_server.url)
    aconn = aioredis.Redis.from_url(redis_server.url)
    keys = Keys("wh" + uuid.uuid4().hex[:8])
    repo = JobRepo(conn, keys)
    deliverer = WebhookDeliverer(aconn, repo, keys, SECRET, UrlPolicy.build(["127.0.0.1"], timeout_seconds=5),
                                 RetryPolicy(0.1, 0.2, 5), poll_seconds=0.05)
    yield repo, deliverer
    await aconn.aclose()
    conn.close()


def finish(repo: JobRepo, url: str) -> Job:
    job, _ = repo.create(Job(owner="alice", workflow={}, webhook=WebhookSpec(url=url)))
    for state in (JobState.DISPATCHED, JobState.RUNNING, JobState.SUCCEEDED):
        job = repo.write(job, transition(job, state))
    return job


async def run_until(deliverer: WebhookDeliverer, done, timeout: float = 20) -> None:  # noqa: ANN001
    task = asyncio.create_task(deliverer.run_forever())
    try:
        deadline = time.monotonic() + timeout
        while not await asyncio.to_thread(done):
            assert time.monotonic() < deadline, "condition not reached in time"
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_final_state_is_delivered_once_and_recorded(parts, receiver: Receiver) -> None:  # noqa: ANN001
    repo, deliverer = parts
    job = finish(repo, receiver.url + "/in")
    assert [d.state for d in repo.require(job.id).webhook_deliveries] == ["pending"]
    await run_until(deliverer, lambda: repo.require(job.id).webhook_deliveries[0].state == "delivered")
    [call] = receiver.received
    verify(SECRET, call.headers, call.body)
    assert call.headers["webhook-id"] == delivery_id(job.id, "job.succeeded")
    assert counters(repo.conn, repo.keys) == {"delivered": 1}
    assert repo.conn.zcard(WebhookKeys.of(repo.keys).due) == 0


async def test_an_entry_whose_state_write_never_happened_is_dropped(parts, receiver: Receiver) -> None:  # noqa: ANN001
    repo, deliverer = parts
    job, _ = repo.create(Job(owner="alice", workflow={}, webhook=WebhookSpec(url=receiver.url + "/in")))
    running = transition(transition(job, JobState.DISPATCHED), JobState.RUNNING)
    # What a writer that lost its compare-and-set (or died) leaves behind: the outbox entry, no state change.
    queue_webhooks(repo.conn, repo.keys, running, transition(running, JobState.FAILED))
    wk = WebhookKeys.of(repo.keys)
    did = delivery_id(job.id, "job.failed")
    repo.conn.hset(wk.message(did), "created", str(time.time() - 3600))  # past the grace period
    await run_until(deliverer, lambda: repo.conn.zcard(wk.due) == 0)
    assert receiver.received == [] and not repo.conn.exists(wk.message(did))
    assert repo.require(job.id).webhook_deliveries == []
