"""A job's trace, caught by an in-process span exporter: the API request over real HTTP, then the dispatcher
(an Engine in this process) running it on a real simulator, all in one trace that the job record names."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from comfyfleet.api.app import create_app
from comfyfleet.dispatch.engine import Engine
from comfyfleet.observability import tracing
from comfyfleet.settings import ApiSettings, DispatchSettings
from tests.support.procs import free_port, wait_for
from tests.support.stack import ALICE, TOKENS, auth


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.shutdown_tracing()
    tracing.setup_tracing("test", DispatchSettings(), exporter=exporter)
    yield exporter
    tracing.shutdown_tracing()


def serve(app, port: int) -> tuple[uvicorn.Server, threading.Thread]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=15, what="in-process API")
    return server, thread


def test_one_trace_from_the_request_to_the_stored_output(exporter, redis_server, sim_factory, tmp_path):
    sim = sim_factory(step_seconds=0.02)
    env = {"redis_url": redis_server.url, "redis_prefix": "tr" + uuid.uuid4().hex[:8], "data_dir": tmp_path}
    port = free_port()
    settings = ApiSettings(**env, port=port, auth_mode="static", api_tokens=TOKENS, comfyui_urls=[sim.url],
                           health_interval_seconds=0.3)
    server, thread = serve(create_app(settings), port)
    try:
        api = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=auth(ALICE), timeout=30)
        wait_for(lambda: api.get("/api/comfyui/workers").json()["ready"] == 1, timeout=20, what="a ready endpoint")
        job = api.post("/api/comfyui/generate",
                       json={"template": "txt2img", "params": {"seed": 5, "steps": 3, "prompt": "x"}}).json()
        job_id = job["jobId"]

        async def dispatch_until_done() -> None:
            engine = Engine(DispatchSettings(**env, dispatcher_port=0))
            running = asyncio.create_task(engine.run())
            try:
                await asyncio.to_thread(wait_for, lambda: api.get(f"/api/comfyui/job/{job_id}").json()["state"]
                                        in ("succeeded", "failed"), 30, 0.1, "the job to finish")
            finally:
                engine.stop()
                await running

        asyncio.run(dispatch_until_done())
        record = api.get(f"/api/comfyui/job/{job_id}").json()
        assert record["state"] == "succeeded", record["error"]
    finally:
        server.should_exit = True
        thread.join(timeout=10)

    spans = {s.name: s for s in exporter.get_finished_spans()}
    request = spans["POST /api/comfyui/generate"]
    trace_id = f"{request.context.trace_id:032x}"
    assert record["traceId"] == trace_id, "the job record names its trace"
    for name in ("queue wait", "claim", "prompt", "output store"):
        span = spans[name]
        assert span.context.trace_id == request.context.trace_id, name
        assert span.parent is not None and span.parent.span_id == request.context.span_id, name
        assert span.attributes["comfyfleet.job_id"] == job_id
        assert span.start_time <= span.end_time
    assert spans["prompt"].attributes["comfyfleet.endpoint"] == record["worker"]
    order = [spans[n].start_time for n in ("queue wait", "claim", "prompt", "output store")]
    assert order == sorted(order)
    events = [e.name for e in spans["prompt"].events]
    assert events[0] == "execution_start" and events[-1] == "execution_success", events
    # The events carry the pod's own clock: execution_start..success spans the pod's reported time.
    pod = spans["prompt"].attributes["comfyui.execution_seconds"]
    first, last = spans["prompt"].events[0].timestamp, spans["prompt"].events[-1].timestamp
    assert pod == pytest.approx((last - first) / 1e9, abs=1e-3)
    assert request.attributes["http.route"] == "/api/comfyui/generate"
    assert ALICE not in json.dumps({k: dict(s.attributes or {}) for k, s in spans.items()})


def test_tracing_is_off_without_an_endpoint():
    tracing.shutdown_tracing()
    assert tracing.setup_tracing("api", DispatchSettings()) is False
    assert tracing.current_traceparent() is None and not tracing.enabled()
