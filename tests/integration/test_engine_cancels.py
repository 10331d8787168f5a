"""A cancel request is not lost, however early it comes.

A claim reads the job's record (its cancel flag included) when it commits; a cancel can land between that read
and the job's start in the dispatcher, and its message with it. The dispatcher remembers such cancels. A cancel
can also come while the job's prompt is on its way to the pod: an interrupt sent then would reach the pod
before the prompt and miss it, so the runner waits for the POST to land (or keeps a prompt not sent yet off
the pod)."""

from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid

import redis

from comfyfleet.dispatch import engine as engine_module
from comfyfleet.dispatch.engine import Engine
from comfyfleet.dispatch.scheduler import Claim
from comfyfleet.settings import DispatchSettings
from tests.support.stack import auth, wait_until
from tests.support.tcpproxy import TcpProxy


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


def test_a_cancel_while_the_prompt_is_being_posted_interrupts_it_once_it_landed(sim_factory, stack_factory):
    sim = sim_factory(step_seconds=0.05)
    proxy = TcpProxy("127.0.0.1", sim.port)  # the dispatcher reaches the pod through it
    try:
        stack = stack_factory([proxy.url], workers=1, env={"COMFYFLEET_DELETE_POD_HISTORY": "false"})
        stack.wait_workers_ready(1)
        proxy.hold(b"POST /prompt", 0.6)  # the prompt's POST takes 0.6 s to reach the pod
        body = {"template": "txt2img", "params": {"seed": 700, "steps": 100, "width": 64, "height": 64}}  # 5 s
        job_id = stack.generate(body).json()["jobId"]
        assert proxy.held.wait(30), "the job's POST /prompt went out"
        assert stack.http.delete(f"/api/comfyui/job/{job_id}", headers=auth()).status_code == 200
        final = stack.wait_state(job_id, timeout=30)
        assert final["state"] == "cancelled", final
        wait_until(lambda: _sim_queue_empty(sim.url), timeout=20, what="the pod's queue empty")
        with urllib.request.urlopen(f"{sim.url}/history/{job_id}", timeout=5) as resp:
            history = json.loads(resp.read())
        # The pod got the prompt after the cancel was heard and was still stopped: deleted while pending (no
        # history) or interrupted; never run to the end.
        assert job_id not in history or history[job_id]["status"]["status_str"] == "error", history
    finally:
        proxy.stop()


def _sim_queue_empty(url: str) -> bool:
    with urllib.request.urlopen(f"{url}/queue", timeout=5) as resp:
        queue = json.loads(resp.read())
    return not queue["queue_running"] and not queue["queue_pending"]
