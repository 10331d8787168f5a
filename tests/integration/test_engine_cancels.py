"""A cancel request that reaches a dispatcher before the job it names has started there is not lost.

A claim reads the job's record (its cancel flag included) when it commits; a cancel can land between that read
and the job's start in the dispatcher, and its message with it. The dispatcher remembers such cancels."""

from __future__ import annotations

import asyncio
import uuid

import redis

from comfyfleet.dispatch import engine as engine_module
from comfyfleet.dispatch.engine import Engine
from comfyfleet.dispatch.scheduler import Claim
from comfyfleet.settings import DispatchSettings


def make_engine(redis_server, tmp_path) -> Engine:
    settings = DispatchSettings(redis_url=redis_server.url, redis_prefix="ec" + uuid.uuid4().hex[:8],
                                data_dir=tmp_path, dispatcher_port=0)
    engine = Engine(settings)

    async def drive(claim: Claim) -> None:  # the job itself is not run here: only its cancel event matters
        await asyncio.sleep(3600)

    engine._drive = drive  # type: ignore[method-assign]
    return engine


async def test_a_cancel_heard_before_its_job_started_cancels_it_at_its_start(redis_server, tmp_path):
    engine = make_engine(redis_server, tmp_path)
    listening = asyncio.create_task(engine._listen())
    conn = redis.Redis.from_url(redis_server.url)
    try:
        for _ in range(100):  # bounded: the subscription takes a moment
            if conn.pubsub_numsub(engine.keys.cancel)[0][1] >= 1:
                break
            await asyncio.sleep(0.05)
        conn.publish(engine.keys.cancel, "job-early")
        for _ in range(100):
            if "job-early" in engine.early_cancels:
                break
            await asyncio.sleep(0.02)
        engine._start(Claim("job-early", "pod-1", "q"))
        engine._start(Claim("job-other", "pod-2", "q"))
        assert engine.cancel_events["job-early"].is_set(), "the cancel heard before the start was kept"
        assert not engine.cancel_events["job-other"].is_set()
        assert "job-early" not in engine.early_cancels, "used once"
        conn.publish(engine.keys.cancel, "job-other")  # a job that runs here: its event at once
        for _ in range(100):
            if engine.cancel_events["job-other"].is_set():
                break
            await asyncio.sleep(0.02)
        assert engine.cancel_events["job-other"].is_set()
    finally:
        listening.cancel()
        for task in engine.tasks.values():
            task.cancel()
        await asyncio.gather(listening, *engine.tasks.values(), return_exceptions=True)


def test_remembered_cancels_are_bounded_oldest_first(redis_server, tmp_path):
    engine = make_engine(redis_server, tmp_path)
    kept = engine_module.EARLY_CANCELS_KEPT
    for i in range(kept + 10):
        engine._cancel_heard(f"job-{i}")
    assert len(engine.early_cancels) == kept
    assert "job-0" not in engine.early_cancels and f"job-{kept + 9}" in engine.early_cancels
