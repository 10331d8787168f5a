"""Follow a job's changes through its Redis pub/sub channel (for SSE and the sync endpoint)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis

from comfyfleet.jobs.model import Job
from comfyfleet.keys import Keys


class JobFeed:
    """Subscribed before the job is read, so no change can slip between the snapshot and the stream."""

    def __init__(self, pubsub: aioredis.client.PubSub):
        self._pubsub = pubsub

    async def next(self, timeout: float) -> tuple[str, Job] | None:
        """The next (event, job) or None when timeout passes with no change."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=min(left, 1.0))
            if message is None or message.get("type") != "message":
                continue
            payload: dict[str, Any] = json.loads(message["data"])
            return payload["event"], Job.model_validate(payload["job"])
        return None


@asynccontextmanager
async def job_feed(aconn: aioredis.Redis, keys: Keys, job_id: str) -> AsyncIterator[JobFeed]:
    pubsub = aconn.pubsub()
    await pubsub.subscribe(keys.events(job_id))
    try:
        yield JobFeed(pubsub)
    finally:
        await pubsub.unsubscribe()
        await pubsub.aclose()


async def wait_until_final(feed: JobFeed, current: Job, timeout: float) -> Job:
    """Follow the feed until the job is final or timeout passes; returns the latest job seen."""
    deadline = time.monotonic() + timeout
    job = current
    while not job.state.is_terminal and (left := deadline - time.monotonic()) > 0:
        item = await feed.next(left)
        if item is None:
            break
        job = item[1]
    return job


