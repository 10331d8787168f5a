"""ComfyClient over real HTTP + websocket.

Two servers: the ComfyUI simulator subprocess (the rule), and a scripted aiohttp server that
replays answers recorded from a real ComfyUI for conditions the simulator cannot be made to show
(Origin 403, plain-text 500, history lag, a dropped socket, unknown and binary frames).
"""

from __future__ import annotations

import asyncio
import json
import struct
import uuid
from typing import Any

import pytest
from aiohttp import WSMsgType, web

from comfyfleet.comfy import (
    ComfyClient,
    ComfyEvent,
    ComfyPromptLost,
    ComfyPromptWithdrawn,
    ComfyProtocolError,
    ComfyUnavailable,
    ComfyValidationError,
    Executed,
    Executing,
    ExecutionError,
    ExecutionStart,
    ExecutionSuccess,
    PreviewImage,
    Progress,
    Status,
    UnknownEvent,
    WatchdogCheck,
)
from comfyfleet.jobs.params import GenerateParams
from comfyfleet.jobs.templates import TEMPLATES
from comfyfleet.jobs.workflow import apply_params
from tests.support.procs import free_port
from tests.support.sim import SimProcess, start_sim
from tests.unit.comfy.recorded import load_capture, ws_frames

pytestmark = pytest.mark.timeout(60)


# --------------------------------------------------------------------------------------------------
# A scripted server replaying recorded answers
# --------------------------------------------------------------------------------------------------


class ScriptedComfy:
    """Speaks ComfyUI's routes with canned answers; tests script what the websocket sends."""

    def __init__(self) -> None:
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.ws_connects: list[str] = []
        self.ws_closed = asyncio.Event()
        self.request_headers: list[dict[str, str]] = []
        self.prompts: list[dict[str, Any]] = []
        self.history_answers: list[Any] = []  # popped per GET /history; the last one repeats
        self.queue_answer: dict[str, Any] = {"queue_running": [], "queue_pending": []}
        self.prompt_answer: tuple[int, Any] = (200, None)  # None: echo prompt_id
        self.on_prompt: Any = None  # async callable(ws, body) run after POST /prompt
        self.connected = asyncio.Event()
        app = web.Application(middlewares=[self._record])
        app.router.add_get("/ws", self._ws)
        app.router.add_post("/prompt", self._prompt)
        app.router.add_get("/history/{pid}", self._history)
        app.router.add_get("/queue", self._queue)
        app.router.add_get("/system_stats", self._forbidden)
        self.app = app

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.request_headers.append(dict(request.headers))
        return await handler(request)

    async def _forbidden(self, request: web.Request) -> web.Response:
        return web.Response(status=403)  # what the Origin middleware answers, empty body

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.query.get("clientId") or uuid.uuid4().hex
        self.sockets[sid] = ws
        self.ws_connects.append(sid)
        await ws.send_json(
            {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": sid}}
        )
        self.connected.set()
        async for msg in ws:
            if msg.type == WSMsgType.ERROR:
                break
        self.ws_closed.set()
        return ws

    async def _prompt(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.prompts.append(body)
        status, answer = self.prompt_answer
        if answer is None:
            answer = {"prompt_id": body["prompt_id"], "number": len(self.prompts), "node_errors": {}}
        if self.on_prompt is not None:
            asyncio.get_running_loop().create_task(self.on_prompt(self.sockets[body["client_id"]], body))
        if isinstance(answer, str):
            return web.Response(status=status, text=answer)
        return web.json_response(answer, status=status)

    async def _queue(self, request: web.Request) -> web.Response:
        return web.json_response(self.queue_answer)

    async def _history(self, request: web.Request) -> web.Response:
        answer = self.history_answers.pop(0) if len(self.history_answers) > 1 else self.history_answers[0]
        return web.json_response(answer)


@pytest.fixture
async def scripted():
    server = ScriptedComfy()
    runner = web.AppRunner(server.app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    server.url = f"http://127.0.0.1:{port}"
    yield server
    await runner.cleanup()


def recorded_run(name: str, key: str, new_id: str) -> list[dict[str, Any]]:
    """The recorded frames of one run, with its prompt id replaced by new_id."""
    capture = load_capture(name)
    old_id = capture.get("prompt_id") or capture["post_response"]["body"]["prompt_id"]
    text = json.dumps([f["json"] for f in ws_frames(capture[key])]).replace(old_id, new_id)
    return json.loads(text)


def recorded_history(name: str, key: str | None, new_id: str) -> dict[str, Any]:
    capture = load_capture(name)
    body = capture["body"] if key is None else capture[key]
    (old_id,) = body
    return json.loads(json.dumps(body).replace(old_id, new_id))


async def test_recorded_run_with_lagging_history(scripted):
    pid = str(uuid.uuid4())
    frames = recorded_run("ws_basic_run.json", "messages", pid)
    other = {"type": "executing", "data": {"node": "7", "prompt_id": "someone-else"}}
    preview = struct.pack(">II", 1, 1) + b"\xff\xd8jpeg"

    async def play(ws: web.WebSocketResponse, body: dict[str, Any]) -> None:
        for i, frame in enumerate(frames):
            await ws.send_json(frame)
            if i == 4:
                await ws.send_json(other)
                await ws.send_bytes(preview)
                await ws.send_json({"type": "crystools.monitor", "data": {"cpu": 1}})

    scripted.on_prompt = play
    # history lags behind the done marker twice before it appears
    scripted.history_answers = [{}, {}, recorded_history("get_history_basic.json", None, pid)]
    seen: list[ComfyEvent] = []
    async with ComfyClient(scripted.url) as client:
        result = await client.run({"3": {"class_type": "SaveImage"}}, pid, seen.append)
    assert result.status == "success" and result.prompt_id == pid
    assert [o.filename for o in result.outputs] == ["basic_00001_.png"]
    assert result.submitted is not None and result.submitted.number == 1
    (posted,) = scripted.prompts
    assert posted["prompt_id"] == pid and posted["client_id"] == client.client_id
    assert scripted.ws_connects == [client.client_id]
    assert not any(isinstance(e, Status) for e in seen)
    assert all(e.event_prompt_id in (pid, None) for e in seen)
    assert any(isinstance(e, PreviewImage) for e in seen)
    assert any(isinstance(e, UnknownEvent) and e.type == "crystools.monitor" for e in seen)
    assert isinstance(seen[0], ExecutionStart)
    assert isinstance(seen[-1], Executing) and seen[-1].node is None
    assert not any(h.get("Origin") for h in scripted.request_headers)


async def test_dropped_socket_reconnects_with_the_same_client_id(scripted):
    pid = str(uuid.uuid4())
    frames = recorded_run("ws_basic_run.json", "messages", pid)

    async def play(ws: web.WebSocketResponse, body: dict[str, Any]) -> None:
        for frame in frames[:5]:
            await ws.send_json(frame)
        await ws.close()
        # the prompt runs on; the client must come back under the same id
        for _ in range(200):
            if len(scripted.ws_connects) > 1:
                break
            await asyncio.sleep(0.01)
        for frame in frames[5:]:
            await scripted.sockets[body["client_id"]].send_json(frame)

    scripted.on_prompt = play
    running = [[1, pid, {}, {"client_id": "x"}, ["3"]]]
    scripted.queue_answer = {"queue_running": running, "queue_pending": []}
    scripted.history_answers = [{}, recorded_history("get_history_basic.json", None, pid)]
    async with ComfyClient(scripted.url, reconnect_backoff=0.05) as client:
        result = await client.run({}, pid)
    assert result.status == "success"
    assert scripted.ws_connects == [client.client_id, client.client_id]


async def test_silent_prompt_in_neither_queue_nor_history_is_lost(scripted):
    scripted.history_answers = [{}]
    async with ComfyClient(scripted.url) as client:
        with pytest.raises(ComfyPromptLost):
            await client.run({}, str(uuid.uuid4()), silence_timeout=0.2)


async def test_origin_403_and_plain_text_500_are_protocol_errors(scripted):
    async with ComfyClient(scripted.url) as client:
        with pytest.raises(ComfyProtocolError) as forbidden:
            await client.system_stats()
        assert forbidden.value.status_code == 403
        non_json = load_capture("post_prompt_invalid.json")["non_json_body"]["response"]
        scripted.prompt_answer = (500, non_json["body_text"])
        with pytest.raises(ComfyProtocolError) as crashed:
            await client.submit({}, "p")
        assert crashed.value.status_code == 500 and "Server got itself in trouble" in crashed.value.body


async def test_recorded_400_raises_validation_error(scripted):
    scripted.prompt_answer = (
        400,
        load_capture("post_prompt_invalid.json")["bad_value_type"]["response"]["body"],
    )
    async with ComfyClient(scripted.url) as client:
        with pytest.raises(ComfyValidationError) as exc:
            await client.run({}, "p")
    assert exc.value.node_errors[0].errors[0].input_name == "width"
    await asyncio.wait_for(scripted.ws_closed.wait(), 5)  # the socket opened first is closed again


async def test_cancelling_run_closes_the_socket(scripted):
    scripted.history_answers = [{}]
    async with ComfyClient(scripted.url) as client:
        task = asyncio.create_task(client.run({}, "p", silence_timeout=30))
        await asyncio.wait_for(scripted.connected.wait(), 5)
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await asyncio.wait_for(scripted.ws_closed.wait(), 5)


async def test_nothing_listening_is_unavailable():
    url = f"http://127.0.0.1:{free_port()}"
    async with ComfyClient(url, timeout=2) as client:
        with pytest.raises(ComfyUnavailable):
            await client.queue()
        with pytest.raises(ComfyUnavailable):
            await client.run({}, "p")


# --------------------------------------------------------------------------------------------------
# The simulator subprocess
# --------------------------------------------------------------------------------------------------

CHECKPOINTS = ["sd15.safetensors", "sdxl_base.safetensors"]
LORAS = ["detail.safetensors"]


@pytest.fixture
def sim_factory(tmp_path):
    """start(**knobs) -> a running simulator subprocess; all are stopped after the test."""
    started: list[SimProcess] = []

    def start(**knobs: Any) -> SimProcess:
        knobs.setdefault("checkpoints", CHECKPOINTS)
        knobs.setdefault("loras", LORAS)
        sim = start_sim(tmp_path / f"sim{len(started)}", **knobs)
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()


def txt2img(seed: int, steps: int = 4, ckpt: str = CHECKPOINTS[0], prefix: str = "t/img") -> dict[str, Any]:
    """The default text-to-image graph (the API's txt2img template) at 64x64; steps may exceed the API's limit."""
    params = GenerateParams(seed=seed, checkpoint=ckpt, filename_prefix=prefix, width=64, height=64,
                            prompt="a lighthouse", negative_prompt="blurry", sampler_name="euler", scheduler="normal")
    workflow = apply_params(TEMPLATES["txt2img"], params)
    workflow["3"]["inputs"]["steps"] = steps
    return workflow


def png_size(data: bytes) -> tuple[int, int]:
    from io import BytesIO

    from PIL import Image

    with Image.open(BytesIO(data)) as img:
        assert img.format == "PNG"
        return img.size


async def until(condition: Any, timeout: float = 10.0, what: str = "") -> Any:
    """Bounded poll of an async or sync condition."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"timed out waiting for {what or condition}")
        await asyncio.sleep(0.05)


def new_id() -> str:
    return str(uuid.uuid4())


async def test_sim_happy_path_ordered_progress_and_png_outputs(sim_factory):
    sim = sim_factory(step_seconds=0.01)
    events: list[ComfyEvent] = []
    pid = new_id()
    async with ComfyClient(sim.url) as client:
        stats = await client.system_stats()
        assert "system" in stats
        result = await client.run(txt2img(seed=1, steps=5), pid, events.append)
        assert result.status == "success" and result.error is None and result.prompt_id == pid
        assert result.submitted is not None and result.submitted.prompt_id == pid
        (ref,) = [o for o in result.outputs if o.node_id == "9"]
        assert ref.type == "output" and ref.filename.endswith(".png")
        assert png_size(await client.view(ref)) == (64, 64)
        assert (await client.history(pid)).status == "success"
    progress = [e for e in events if isinstance(e, Progress)]
    assert [p.value for p in progress] == [1, 2, 3, 4, 5]
    assert all(p.max == 5 and p.node == "3" for p in progress)
    kinds = [type(e) for e in events]
    assert kinds[0] is ExecutionStart and kinds.index(ExecutionStart) < kinds.index(Progress)
    assert kinds[-2:] == [ExecutionSuccess, Executing] and events[-1].node is None
    assert any(isinstance(e, Executed) and e.node == "9" for e in events)
    assert all(e.event_prompt_id in (pid, None) for e in events)


async def test_sim_validation_error_names_node_and_input(sim_factory):
    sim = sim_factory()
    prompt = txt2img(seed=2)
    prompt["5"]["inputs"]["width"] = 0
    del prompt["3"]["inputs"]["model"]
    async with ComfyClient(sim.url) as client:
        with pytest.raises(ComfyValidationError) as exc:
            await client.run(prompt, new_id())
        assert (await client.queue()).running == []
    error = exc.value
    assert error.error_type == "prompt_outputs_failed_validation"
    inputs = {(n.node_id, e.input_name) for n in error.node_errors for e in n.errors}
    assert {("5", "width"), ("3", "model")} <= inputs
    assert "node 3 (KSampler)" in str(error) and "'model'" in str(error)


async def test_sim_unknown_checkpoint_is_a_validation_error(sim_factory):
    sim = sim_factory()
    async with ComfyClient(sim.url) as client:
        with pytest.raises(ComfyValidationError) as exc:
            await client.submit(txt2img(seed=3, ckpt="missing.safetensors"), new_id())
    assert any(e.input_name == "ckpt_name" for n in exc.value.node_errors for e in n.errors)


async def test_sim_runtime_error(sim_factory):
    sim = sim_factory(failure_rate=1.0, step_seconds=0.01)
    events: list[ComfyEvent] = []
    async with ComfyClient(sim.url) as client:
        result = await client.run(txt2img(seed=4), new_id(), events.append)
    assert result.status == "error" and result.outputs == []
    assert result.error is not None and result.error.node_id and result.error.exception_message
    assert any(isinstance(e, ExecutionError) for e in events)


async def test_sim_cancel_interrupts_a_long_ksampler(sim_factory):
    sim = sim_factory(step_seconds=0.2)
    progress = asyncio.Event()

    def on_event(event: ComfyEvent) -> None:
        if isinstance(event, Progress):
            progress.set()

    pid = new_id()
    async with ComfyClient(sim.url) as client:
        run = asyncio.create_task(client.run(txt2img(seed=5, steps=200), pid, on_event))
        await asyncio.wait_for(progress.wait(), 10)
        async with ComfyClient(sim.url) as other:  # e.g. the API process cancelling a job
            await other.cancel(pid)
        result = await asyncio.wait_for(run, 10)
    assert result.status == "interrupted" and result.error is None
    assert result.interrupted is not None and result.interrupted.prompt_id == pid


async def test_a_run_withdrawn_before_its_post_never_reaches_the_server(sim_factory):
    sim = sim_factory(step_seconds=0.05)
    withdrawn = asyncio.Event()
    withdrawn.set()
    pid = new_id()
    async with ComfyClient(sim.url) as client:
        with pytest.raises(ComfyPromptWithdrawn):
            await client.run(txt2img(seed=8, steps=4), pid, withdrawn=withdrawn)
        assert pid not in await client.queue()
        assert await client.history(pid) is None
        # Unset, the same client runs it as usual.
        result = await client.run(txt2img(seed=8, steps=4), pid, withdrawn=asyncio.Event())
    assert result.status == "success"


async def test_sim_delete_pending_prompt(sim_factory):
    sim = sim_factory(step_seconds=0.2)
    running, pending = new_id(), new_id()
    async with ComfyClient(sim.url) as client:
        first = await client.submit(txt2img(seed=6, steps=200), running)
        # ComfyUI's executor takes a prompt off the queue in its own thread, a moment after the POST answered.
        await until(lambda: _running(sim.url, running), what="first prompt running")
        second = await client.submit(txt2img(seed=7, steps=200), pending)
        assert second.number > first.number
        state = await client.queue()
        assert state.pending == [pending] and running in state
        await client.delete_queued([pending])
        state = await client.queue()
        assert pending not in state and state.running == [running]
        await client.cancel(running)
        await until(lambda: _gone(client, running), what="interrupted prompt leaves the queue")
        assert await client.history(pending) is None
        assert (await client.history(running)).status == "interrupted"


async def _gone(client: ComfyClient, prompt_id: str) -> bool:
    return prompt_id not in await client.queue()


async def test_sim_resume_attaches_without_posting_twice(sim_factory):
    sim = sim_factory(step_seconds=0.05)
    pid = new_id()
    events: list[ComfyEvent] = []
    async with ComfyClient(sim.url) as first:  # the worker that died after posting
        submitted = await first.submit(txt2img(seed=8, steps=30), pid)
    await until(lambda: _running(sim.url, pid), what="prompt running")
    async with ComfyClient(sim.url) as client:
        run = asyncio.create_task(client.run(txt2img(seed=8, steps=30), pid, events.append, resume=True))
        await until(lambda: any(isinstance(e, Progress) for e in events), what="progress after attaching")
        state = await client.queue()
        assert state.running == [pid] and state.pending == []
        result = await asyncio.wait_for(run, 20)
        assert result.status == "success" and result.submitted is None
        assert (await client.history(pid)).number == submitted.number
        # resuming a finished prompt returns its result without running it again
        again = await client.run(txt2img(seed=8, steps=30), pid, resume=True)
        assert again.status == "success" and again.outputs == result.outputs and again.submitted is None
        assert (await client.queue()).running == []


async def _running(url: str, prompt_id: str) -> bool:
    async with ComfyClient(url) as probe:
        return (await probe.queue()).running == [prompt_id]


async def test_sim_killed_mid_run_is_unavailable(sim_factory):
    sim = sim_factory(step_seconds=0.2)
    progress = asyncio.Event()
    async with ComfyClient(sim.url, reconnect_backoff=0.1) as client:
        run = asyncio.create_task(
            client.run(
                txt2img(seed=9, steps=200), new_id(), lambda e: isinstance(e, Progress) and progress.set()
            )
        )
        await asyncio.wait_for(progress.wait(), 10)
        await asyncio.to_thread(sim.kill)
        with pytest.raises(ComfyUnavailable):
            await asyncio.wait_for(run, 10)


async def test_sim_hang_is_seen_as_still_running_then_cancelled(sim_factory):
    sim = sim_factory(hang=True)
    checks: list[WatchdogCheck] = []
    pid = new_id()
    async with ComfyClient(sim.url) as client:
        run = asyncio.create_task(
            client.run(txt2img(seed=10), pid, lambda e: isinstance(e, WatchdogCheck) and checks.append(e),
                       silence_timeout=0.3)
        )  # fmt: skip
        await until(lambda: len(checks) >= 2 or run.done(), what="two watchdog checks")
        assert not run.done()
        assert checks[-1].state == "running" and checks[-1].prompt_id == pid and checks[-1].silent_for >= 0.3
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        await client.cancel(pid)


async def test_sim_available_models(sim_factory):
    sim = sim_factory(checkpoints=["b.safetensors", "a.ckpt"], loras=["l1.safetensors"])
    async with ComfyClient(sim.url) as client:
        models = await client.available_models()
        assert sorted(models.checkpoints) == ["a.ckpt", "b.safetensors"]
        assert models.loras == ["l1.safetensors"]
        assert "KSampler" in await client.object_info()
        assert await client.object_info("NoSuchNode") == {}


async def test_sim_upload_then_load_image(sim_factory):
    from io import BytesIO

    from PIL import Image

    sim = sim_factory(step_seconds=0.01)
    buf = BytesIO()
    Image.new("RGB", (24, 16), (255, 0, 0)).save(buf, format="PNG")
    async with ComfyClient(sim.url) as client:
        uploaded = await client.upload_image(buf.getvalue(), "red.png", subfolder="jobs")
        assert (uploaded.name, uploaded.subfolder, uploaded.type) == ("red.png", "jobs", "input")
        prompt = {
            "1": {"class_type": "LoadImage", "inputs": {"image": uploaded.load_image_value}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "t/loaded"}},
        }
        result = await client.run(prompt, new_id())
        assert result.status == "success"
        (ref,) = result.outputs
        assert png_size(await client.view(ref)) == (24, 16)
        same = await client.upload_image(buf.getvalue(), "red.png", subfolder="jobs")
        assert same.name == "red.png"  # same bytes: deduplicated, not renamed


async def test_sim_partly_invalid_prompt_runs_its_valid_outputs(sim_factory):
    sim = sim_factory()
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 255}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t/good"}},
        "3": {"class_type": "ImageInvert", "inputs": {}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "t/bad"}},
    }
    async with ComfyClient(sim.url) as client:
        result = await client.run(prompt, new_id())
    assert result.status == "success"
    assert [o.node_id for o in result.outputs] == ["2"]
    assert result.submitted is not None
    assert [(n.node_id, n.class_type) for n in result.submitted.node_errors] == [("3", "ImageInvert")]
    assert result.submitted.node_errors[0].dependent_outputs == ["4"]
