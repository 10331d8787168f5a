"""The Python client (sync and async) against the real API, and `comfyfleet submit` against a hostile server."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from comfyfleet.client import AsyncClient, Client, ComfyfleetError, JobTimeout
from tests.support.receiver import Receiver, Reply
from tests.support.stack import ALICE, BOB


def txt2img(seed: int, steps: int = 2) -> dict:
    return {"template": "txt2img", "params": {"seed": seed, "steps": steps, "prompt": "a fox"}}


def test_sync_client(sim_factory, stack_factory) -> None:  # noqa: ANN001
    sim = sim_factory(step_seconds=0.05, loras="detail_tweaker_xl.safetensors")  # 150 steps: 7.5 s
    stack = stack_factory([sim.url], workers=1)
    stack.wait_workers_ready(1)
    with Client(stack.url, ALICE) as cf:
        done = cf.generate(template="txt2img", params={"seed": 1, "steps": 2, "prompt": "x"}, wait=True,
                           wait_timeout=60, output={"format": "jpeg", "inline": True})
        assert done.state.value == "succeeded" and done.outputs[0].content_type == "image/jpeg"
        assert cf.download(done.outputs[0]).startswith(b"\xff\xd8\xff")

        queued = cf.generate(**txt2img(2, steps=8))
        events = list(cf.events(queued.job_id))
        assert events[-1].job.state.value == "succeeded" and events[-1].job.job_id == queued.job_id
        assert {e.event for e in events} >= {"state", "progress"}
        assert cf.status(queued.job_id).state.value == "succeeded"
        assert cf.download(cf.job(queued.job_id).outputs[0]).startswith(b"\x89PNG")

        assert {j.job_id for j in cf.jobs(limit=10).jobs} >= {done.job_id, queued.job_id}
        assert cf.workers().ready == 1
        assert cf.queue_stats().created >= 2
        lora = cf.verify_lora(["detail_tweaker_xl.safetensors", "missing.safetensors"])
        assert [r.available for r in lora.results] == [True, False] and not lora.all_available

        with pytest.raises(ComfyfleetError) as bad:
            cf.generate(template="txt2img", params={"steps": 0})
        assert bad.value.status == 422 and bad.value.details[0]["field"] == "params.steps"
        with pytest.raises(JobTimeout):
            cf.generate(**txt2img(3, steps=150), wait=True, wait_timeout=0.5)
    with Client(stack.url, BOB) as other, pytest.raises(ComfyfleetError) as missing:
        other.job(done.job_id)
    assert missing.value.status == 404


async def test_async_client_cancel_and_wait(sim_factory, stack_factory) -> None:  # noqa: ANN001
    sim = sim_factory(step_seconds=0.2)
    stack = stack_factory([sim.url], workers=1)
    stack.wait_workers_ready(1)
    async with AsyncClient(stack.url, ALICE) as cf:
        job = await cf.generate(**txt2img(4, steps=100))
        async for event in cf.events(job.job_id):
            if event.job.state.value == "running":
                break
        cancelled = await cf.cancel(job.job_id)
        assert cancelled.cancel_requested
        final = await cf.wait(job.job_id, timeout=60)
        assert final.state.value == "cancelled"
        quick = await cf.generate(**txt2img(5), wait=True, wait_timeout=60)
        assert quick.state.value == "succeeded"
        assert (await cf.queue_stats()).cancelled >= 1
        assert (await cf.workers()).ready + (await cf.workers()).busy == 1


@pytest.fixture
def hostile() -> Iterator[tuple[Receiver, Receiver]]:
    """A server that answers like the API but with path-escaping ids and names, and an output on another host."""
    api, elsewhere = Receiver(), Receiver()
    yield api, elsewhere
    api.stop()
    elsewhere.stop()


def job_json(job_id: str, outputs: list[dict], state: str = "succeeded") -> bytes:
    return json.dumps({
        "jobId": job_id, "owner": "alice", "state": state, "priority": 5, "pool": None, "template": None,
        "progress": {"value": 1, "max": 1, "node": None, "percent": 100}, "attempts": 1, "maxAttempts": 3,
        "error": None, "outputs": outputs, "worker": None, "source": "api", "cancelRequested": False,
        "createdAt": "2026-12-01T00:00:00Z", "updatedAt": "2026-12-01T00:00:00Z", "startedAt": None,
        "finishedAt": None,
    }).encode()


def run_submit(api: Receiver, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "comfyfleet", "submit", "--template", "txt2img", "--wait",
                           "--quiet", "--api", api.url, "--token", "secret-token-0123456789", "--out", str(out)],
                          capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2])


def test_submit_never_writes_outside_out_nor_leaks_the_token(hostile, tmp_path: Path) -> None:  # noqa: ANN001
    api, elsewhere = hostile
    job_id = "6f1c0d3e-0000-4000-8000-000000000001"
    outputs = [
        {"filename": "../../../escaped.png", "nodeId": "9", "contentType": "image/png", "size": 4,
         "url": f"/api/comfyui/outputs/{job_id}/a.png"},
        {"filename": "/etc/cron.d/evil", "nodeId": "9", "contentType": "image/png", "size": 4,
         "url": elsewhere.url + "/bucket/b.png?X-Amz-Signature=x"},
    ]
    final = job_json(job_id, outputs)
    api.routes["/api/comfyui/generate"] = Reply(202, job_json(job_id, [], "queued"),
                                                {"content-type": "application/json"})
    api.routes[f"/api/comfyui/job/{job_id}/events"] = Reply(
        200, b"event: state\ndata: " + final + b"\n\n", {"content-type": "text/event-stream"})
    api.routes[f"/api/comfyui/outputs/{job_id}/a.png"] = Reply(200, b"AAAA")
    elsewhere.routes["/bucket/b.png"] = Reply(200, b"BBBB")
    out = tmp_path / "out"
    r = run_submit(api, out)
    assert r.returncode == 0, r.stderr
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert written == [f"out/{job_id}/escaped.png", f"out/{job_id}/evil"]
    assert (out / job_id / "evil").read_bytes() == b"BBBB"
    assert all(c.headers.get("authorization") == "Bearer secret-token-0123456789" for c in api.received)
    assert [c.headers.get("authorization") for c in elsewhere.received] == [None], "no token to another host"

    api.routes["/api/comfyui/generate"] = Reply(202, job_json("../../../tmp/pwn", [], "queued"),
                                                {"content-type": "application/json"})
    r = run_submit(api, tmp_path / "out2")
    assert r.returncode == 1 and "unusable job id" in r.stderr
    assert not (tmp_path / "out2").exists()
