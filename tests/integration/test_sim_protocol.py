"""The simulator as a real subprocess over real HTTP + websocket, compared with the ComfyUI 0.3.64 captures.

Frames and bodies are compared exactly after replacing prompt ids and timestamps, so key order, value types
(1 vs 1.0) and message order all count.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from PIL import Image

from tests.support.procs import wait_for
from tests.support.sim import SimProcess, running_sim, start_sim
from tests.unit.sim.recorded import capture

REPO = Path(__file__).resolve().parents[2]
REQUEST = capture("post_prompt_basic_request.json")
CLIENT = "probe-client-1"
FRAME_TIMEOUT = 20.0


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimProcess]:
    with running_sim(tmp_path) as s:
        yield s


@pytest.fixture(scope="module")
def idle_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    """One simulator for the read-only checks below; they post no prompts, so it stays idle."""
    with running_sim(tmp_path_factory.mktemp("idle-sim")) as s:
        yield s


def norm(obj: Any, *ids: str) -> Any:
    """Replace the given prompt ids with <id> and every timestamp with 0."""
    text = json.dumps(obj)
    for pid in ids:
        text = text.replace(pid, "<id>")
    return json.loads(re.sub(r'"timestamp": \d+', '"timestamp": 0', text))


async def recv(ws: Any, timeout: float = FRAME_TIMEOUT) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def until_done(ws: Any, prompt_id: str, timeout: float = FRAME_TIMEOUT) -> list[dict[str, Any]]:
    """Frames up to and including `executing` null for prompt_id."""
    frames = []
    async with asyncio.timeout(timeout):
        while True:
            frame = await recv(ws)
            frames.append(frame)
            data = frame["data"]
            if frame["type"] == "executing" and data["node"] is None and data["prompt_id"] == prompt_id:
                return frames


async def connect(sim: SimProcess, client_id: str | None = CLIENT) -> Any:
    ws = await websockets.connect(sim.ws_url + (f"?clientId={client_id}" if client_id else ""))
    await recv(ws)  # the hello status frame
    return ws


def post(sim: SimProcess, body: Any) -> httpx.Response:
    return httpx.post(sim.url + "/prompt", json=body, timeout=10)


def txt2img(seed: int = 1, steps: int = 4, prefix: str = "t/img") -> dict[str, Any]:
    wf = json.loads((REPO / "examples" / "txt2img.json").read_text())
    wf["3"]["inputs"].update(seed=seed, steps=steps)
    wf["5"]["inputs"].update(width=64, height=64)
    wf["9"]["inputs"]["filename_prefix"] = prefix
    return wf


def blur_chain(color: int) -> dict[str, Any]:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": color}},
        "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 3, "sigma": 1.0}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }


def history(sim: SimProcess, prompt_id: str) -> dict[str, Any]:
    return httpx.get(f"{sim.url}/history/{prompt_id}").json()


def queue(sim: SimProcess) -> dict[str, Any]:
    return httpx.get(sim.url + "/queue").json()


def running_id(sim: SimProcess) -> str | None:
    running = queue(sim)["queue_running"]
    return running[0][1] if running else None


# --- the basic run ---------------------------------------------------------------------------------
async def test_basic_run_and_cached_rerun_match_the_captures(sim: SimProcess) -> None:
    async with websockets.connect(f"{sim.ws_url}?clientId={CLIENT}") as ws:
        assert await recv(ws) == capture("ws_hello_with_clientId.json")[0]["json"]
        await ws.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
        assert await recv(ws) == capture("ws_hello_with_clientId.json")[1]["json"]

        r = post(sim, REQUEST)
        expected_response = capture("post_prompt_basic_response.json")
        assert r.status_code == 200
        assert r.headers["Content-Type"] == expected_response["content_type"]
        first = r.json()
        assert list(first) == ["prompt_id", "number", "node_errors"] and first["number"] == 0
        run = capture("ws_basic_run.json")
        assert norm(await until_done(ws, first["prompt_id"]), first["prompt_id"]) == norm(
            [m["json"] for m in run["messages"]], run["prompt_id"]
        )
        got = history(sim, first["prompt_id"])[first["prompt_id"]]
        want = capture("get_history_basic.json")["body"][run["prompt_id"]]
        assert got["prompt"][0] == 0 and want["prompt"][0] == 3  # the global counter
        got["prompt"][0] = want["prompt"][0]
        assert norm(got, first["prompt_id"]) == norm(want, run["prompt_id"])

        second = post(sim, REQUEST).json()
        assert second["number"] == 1
        rerun = capture("ws_basic_rerun_cached.json")
        assert norm(await until_done(ws, second["prompt_id"]), second["prompt_id"]) == norm(
            [m["json"] for m in rerun["messages"]], rerun["prompt_id"]
        )
        assert history(sim, second["prompt_id"])[second["prompt_id"]]["outputs"] == got["outputs"]
    assert [p.name for p in (sim.output_dir / "probe").iterdir()] == ["basic_00001_.png"]


async def test_cache_none_runs_identical_prompts_again(tmp_path: Path) -> None:
    with running_sim(tmp_path, cache=False) as sim:
        ws = await connect(sim)
        names = []
        for _ in range(2):
            pid = post(sim, REQUEST).json()["prompt_id"]
            frames = await until_done(ws, pid)
            assert frames[3] == {"type": "execution_cached", "data": {"nodes": [], "prompt_id": pid,
                                                                      "timestamp": frames[3]["data"]["timestamp"]}}
            names.append(history(sim, pid)[pid]["outputs"]["3"]["images"][0]["filename"])
        await ws.close()
    assert names == ["basic_00001_.png", "basic_00002_.png"]


async def test_txt2img_reports_progress_and_writes_a_png_with_the_prompt(sim: SimProcess) -> None:
    ws = await connect(sim)
    pid = post(sim, {"prompt": txt2img(seed=7, steps=3), "client_id": CLIENT}).json()["prompt_id"]
    frames = await until_done(ws, pid)
    await ws.close()
    progress = [f["data"] for f in frames if f["type"] == "progress"]
    assert progress == [{"value": v, "max": 3, "prompt_id": pid, "node": "3"} for v in (1, 2, 3)]
    assert [f["data"]["node"] for f in frames if f["type"] == "executing"][-1] is None
    image = history(sim, pid)[pid]["outputs"]["9"]["images"][0]
    assert image == {"filename": "img_00001_.png", "subfolder": "t", "type": "output"}
    r = httpx.get(sim.url + "/view", params={"filename": "img_00001_.png", "subfolder": "t", "type": "output"})
    with Image.open(io.BytesIO(r.content)) as img:
        assert img.size == (64, 64)
        assert json.loads(img.text["prompt"])["3"]["inputs"]["seed"] == 7  # type: ignore[attr-defined]


async def test_binary_previews_follow_each_clients_feature_flags(tmp_path: Path) -> None:
    with running_sim(tmp_path, preview_method="auto") as sim:
        modern = await connect(sim)
        await modern.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
        assert (await recv(modern))["type"] == "feature_flags"
        pid = post(sim, {"prompt": txt2img(steps=2), "client_id": CLIENT}).json()["prompt_id"]
        binary: list[bytes] = []
        async with asyncio.timeout(FRAME_TIMEOUT):
            while True:
                raw = await modern.recv()
                if isinstance(raw, bytes):
                    binary.append(raw)
                elif json.loads(raw)["type"] == "executing" and json.loads(raw)["data"]["node"] is None:
                    break
        assert len(binary) == 2
        for frame in binary:
            assert int.from_bytes(frame[:4], "big") == 4
            size = int.from_bytes(frame[4:8], "big")
            meta = json.loads(frame[8 : 8 + size])
            assert meta == {"node_id": "3", "prompt_id": pid, "display_node_id": "3", "parent_node_id": None,
                            "real_node_id": "3", "image_type": "image/jpeg"}
            Image.open(io.BytesIO(frame[8 + size :])).verify()
        await modern.close()

        legacy = await connect(sim, "legacy")
        post(sim, {"prompt": txt2img(seed=2, steps=1), "client_id": "legacy"})
        frames: list[str | bytes] = []
        while not frames or isinstance(frames[-1], bytes) or json.loads(frames[-1])["type"] != "progress":
            frames.append(await asyncio.wait_for(legacy.recv(), FRAME_TIMEOUT))
        raw = await asyncio.wait_for(legacy.recv(), FRAME_TIMEOUT)
        assert isinstance(raw, bytes) and raw[:8] == (1).to_bytes(4, "big") + (1).to_bytes(4, "big")
        assert raw[8:10] == b"\xff\xd8"  # JPEG
        await legacy.close()


# --- routing traps ---------------------------------------------------------------------------------
async def test_other_clients_see_only_status_frames(sim: SimProcess) -> None:
    mine, other = await connect(sim), await connect(sim, "someone-else")
    pid = post(sim, REQUEST).json()["prompt_id"]
    await until_done(mine, pid)
    seen = [await recv(other) for _ in range(3)]
    assert seen == [m["json"] for m in capture("ws_basic_run_seen_by_other_client.json")]
    with pytest.raises(TimeoutError):
        await recv(other, timeout=0.3)
    await mine.close()
    await other.close()


async def test_prompt_without_client_id_sends_no_execution_events(sim: SimProcess) -> None:
    named, anonymous = await connect(sim, "someone"), await connect(sim, None)
    request = {"prompt": REQUEST["prompt"]}
    pid = post(sim, request).json()["prompt_id"]
    wait_for(lambda: history(sim, pid), what="history entry")
    cap = capture("prompt_without_client_id.json")
    for ws, key in ((named, "seen_by_socket_with_other_clientId"), (anonymous, "seen_by_anonymous_socket")):
        assert [await recv(ws) for _ in range(3)] == [m["json"] for m in cap[key]]
        with pytest.raises(TimeoutError):
            await recv(ws, timeout=0.3)
        await ws.close()
    entry = history(sim, pid)[pid]
    assert entry["status"]["status_str"] == cap["history_status"] and entry["prompt"][3] == {}


async def test_second_socket_with_same_client_id_takes_over(sim: SimProcess) -> None:
    first = await connect(sim)
    second = await connect(sim)
    pid = post(sim, REQUEST).json()["prompt_id"]
    frames = await until_done(second, pid)
    assert [f["type"] for f in frames] == capture("duplicate_clientId_sockets.json")["second_socket_types"]
    with pytest.raises(TimeoutError):
        await recv(first, timeout=0.3)
    assert first.state.name == "OPEN"
    await first.close()
    await second.close()


async def test_closing_the_replaced_socket_unregisters_its_replacement(sim: SimProcess) -> None:
    # ComfyUI forgets a clientId when any socket with that id closes, even an older, replaced one.
    first = await connect(sim)
    second = await connect(sim)
    await first.close()
    await asyncio.sleep(0.2)
    post(sim, REQUEST)
    with pytest.raises(TimeoutError):
        await recv(second, timeout=1.0)
    await second.close()


async def test_reconnect_during_a_run_replays_the_current_node(tmp_path: Path) -> None:
    with running_sim(tmp_path, step_seconds=0.05) as sim:
        ws = await connect(sim)
        pid = post(sim, {"prompt": txt2img(steps=60), "client_id": CLIENT}).json()["prompt_id"]
        while (await recv(ws))["type"] != "progress":
            pass
        await ws.close()
        async with websockets.connect(f"{sim.ws_url}?clientId={CLIENT}") as again:
            assert (await recv(again))["data"]["sid"] == CLIENT
            assert await recv(again) == {"type": "executing", "data": {"node": "3"}}
            httpx.post(sim.url + "/interrupt", json={"prompt_id": pid})
            await until_done(again, pid)


# --- failures --------------------------------------------------------------------------------------
async def test_runtime_error_from_a_corrupt_upload(sim: SimProcess) -> None:
    r = httpx.post(sim.url + "/upload/image", files={"image": ("corrupt.png", b"not a png", "image/png")})
    assert r.json() == {"name": "corrupt.png", "subfolder": "", "type": "input"}
    prompt = {
        "2": {"class_type": "LoadImage", "inputs": {"image": "corrupt.png"}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    ws = await connect(sim)
    pid = post(sim, {"prompt": prompt, "client_id": CLIENT}).json()["prompt_id"]
    frames = await until_done(ws, pid)
    await ws.close()
    assert [f["type"] for f in frames] == ["status", "status", "execution_start", "execution_cached",
                                           "progress_state", "executing", "execution_error", "status", "executing"]
    error = frames[6]["data"]
    captured = capture_runtime_error()
    assert list(error) == list(captured)
    assert error["exception_type"] == "PIL.UnidentifiedImageError"
    assert error["exception_message"] == f"cannot identify image file '{sim.input_dir / 'corrupt.png'}'\n"
    assert (error["node_id"], error["node_type"], error["executed"]) == ("2", "LoadImage", [])
    assert error["current_inputs"] == {"image": ["corrupt.png"]} and sorted(error["current_outputs"]) == ["2", "3"]
    entry = history(sim, pid)[pid]
    assert entry["outputs"] == {} and entry["meta"] == {}
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    assert [m[0] for m in entry["status"]["messages"]] == ["execution_start", "execution_cached", "execution_error"]


def capture_runtime_error() -> dict[str, Any]:
    """The execution_error data keys from the real capture (kept inline: that capture is large)."""
    keys = ["prompt_id", "node_id", "node_type", "executed", "exception_message", "exception_type", "traceback",
            "current_inputs", "current_outputs", "timestamp"]  # fmt: skip
    return dict.fromkeys(keys)


async def test_failure_rate_fails_every_prompt_with_an_oom(tmp_path: Path) -> None:
    with running_sim(tmp_path, failure_rate=1.0) as sim:
        ws = await connect(sim)
        pid = post(sim, {"prompt": txt2img(), "client_id": CLIENT}).json()["prompt_id"]
        frames = await until_done(ws, pid)
        await ws.close()
        error = next(f["data"] for f in frames if f["type"] == "execution_error")
        assert error["exception_type"] == "torch.OutOfMemoryError" and error["node_type"] == "KSampler"
        assert history(sim, pid)[pid]["status"]["status_str"] == "error"


async def test_global_interrupt_lands_at_a_step_and_is_broadcast(tmp_path: Path) -> None:
    with running_sim(tmp_path, step_seconds=0.05) as sim:
        ws, other = await connect(sim), await connect(sim, "someone-else")
        long_pid = post(sim, {"prompt": txt2img(steps=200), "client_id": CLIENT}).json()["prompt_id"]
        next_pid = post(sim, {"prompt": blur_chain(1), "client_id": CLIENT}).json()["prompt_id"]
        while (await recv(ws))["type"] != "progress":
            pass
        assert httpx.post(sim.url + "/interrupt", json={"prompt_id": "not-running"}).status_code == 200
        r = httpx.post(sim.url + "/interrupt")
        assert (r.status_code, r.content, r.headers.get("Content-Type")) == (200, b"", None)
        frames = await until_done(ws, long_pid)
        tail = [f["type"] for f in frames[-3:]]
        assert tail == ["execution_interrupted", "status", "executing"]
        interrupted = frames[-3]["data"]
        assert (interrupted["node_id"], interrupted["node_type"]) == ("3", "KSampler")
        assert list(interrupted) == ["prompt_id", "node_id", "node_type", "executed", "timestamp"]
        seen_by_other = [(await recv(other))["type"] for _ in range(4)]
        assert "execution_interrupted" in seen_by_other
        entry = history(sim, long_pid)[long_pid]
        assert (entry["outputs"], entry["status"]["status_str"], entry["status"]["completed"]) == ({}, "error", False)
        # The next prompt runs normally.
        frames = await until_done(ws, next_pid)
        assert frames[-3]["type"] == "execution_success"
        await ws.close()
        await other.close()


async def test_queue_delete_clear_and_history_ops(tmp_path: Path) -> None:
    with running_sim(tmp_path, step_seconds=0.05) as sim:
        a = post(sim, {"prompt": txt2img(steps=400), "client_id": CLIENT}).json()["prompt_id"]
        b, c, d = (post(sim, {"prompt": blur_chain(i), "client_id": CLIENT}).json()["prompt_id"] for i in (2, 3, 4))
        wait_for(lambda: running_id(sim) == a, what="A running")
        q = queue(sim)
        assert [e[1] for e in q["queue_pending"]] == [b, c, d]
        assert all(len(e) == 5 and e[3] == {"client_id": CLIENT} for e in q["queue_running"] + q["queue_pending"])
        assert httpx.get(sim.url + "/prompt").json() == {"exec_info": {"queue_remaining": 4}}
        for ids in ([b], ["unknown"], [a]):
            r = httpx.post(sim.url + "/queue", json={"delete": ids})
            assert (r.status_code, r.content) == (200, b"")
        assert [e[1] for e in queue(sim)["queue_pending"]] == [c, d] and running_id(sim) == a
        httpx.post(sim.url + "/queue", json={"clear": True})
        assert queue(sim)["queue_pending"] == [] and running_id(sim) == a
        httpx.post(sim.url + "/interrupt", json={"prompt_id": a})
        wait_for(lambda: history(sim, a), what="A in history")
        assert queue(sim) == capture("get_queue_idle.json")["body"]
        assert history(sim, b) == {} and history(sim, c) == {}
        e = post(sim, {"prompt": blur_chain(9), "client_id": CLIENT}).json()["prompt_id"]
        wait_for(lambda: history(sim, e), what="E in history")
        assert list(httpx.get(sim.url + "/history", params={"max_items": 1}).json()) == [e]
        assert list(httpx.get(sim.url + "/history").json()) == [a, e]
        httpx.post(sim.url + "/history", json={"delete": [a]})
        assert list(httpx.get(sim.url + "/history").json()) == [e]
        httpx.post(sim.url + "/history", json={"clear": True})
        assert httpx.get(sim.url + "/history").json() == {}


async def test_front_and_explicit_number(sim: SimProcess) -> None:
    assert post(sim, {"prompt": blur_chain(1), "front": True}).json()["number"] == 0
    assert post(sim, {"prompt": blur_chain(2), "front": True}).json()["number"] == -1
    assert post(sim, {"prompt": blur_chain(3), "number": 5.5}).json()["number"] == 5.5
    assert post(sim, {"prompt": blur_chain(4), "prompt_id": "mine"}).json() == {
        "prompt_id": "mine", "number": 2, "node_errors": {}}  # fmt: skip


# --- knobs: crash, hang, slow start ----------------------------------------------------------------
async def test_crash_knob_kills_the_process_mid_job(tmp_path: Path) -> None:
    sim = start_sim(tmp_path, crash_after_steps=3, step_seconds=0.02)
    try:
        ws = await connect(sim)
        post(sim, {"prompt": txt2img(steps=50), "client_id": CLIENT})
        progress = []
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                frame = await recv(ws)
                if frame["type"] == "progress":
                    progress.append(frame["data"]["value"])
        assert progress == [1, 2, 3]
        assert sim.wait_exit() == 137
        with pytest.raises(httpx.ConnectError):
            httpx.get(sim.url + "/system_stats")
    finally:
        sim.stop()


async def test_hang_knob_accepts_but_never_finishes(tmp_path: Path) -> None:
    with running_sim(tmp_path, hang=True) as sim:
        ws = await connect(sim)
        pid = post(sim, {"prompt": REQUEST["prompt"], "client_id": CLIENT}).json()["prompt_id"]
        types = []
        with pytest.raises(TimeoutError):
            while True:
                types.append((await recv(ws, timeout=1.0))["type"])
        assert types[-1] == "executing" and "execution_success" not in types
        assert running_id(sim) == pid and history(sim, pid) == {}
        httpx.post(sim.url + "/interrupt")
        with pytest.raises(TimeoutError):
            await recv(ws, timeout=0.5)
        await ws.close()


async def test_interrupt_during_a_slow_node_lands_at_the_next_node(tmp_path: Path) -> None:
    # Real ComfyUI checks for an interrupt only between nodes and in sampler steps; a long VAE decode runs on.
    with running_sim(tmp_path, slow_node_seconds=1.0) as sim:
        ws = await connect(sim)
        pid = post(sim, {"prompt": txt2img(steps=2), "client_id": CLIENT}).json()["prompt_id"]
        while (await recv(ws))["data"].get("node") != "8":  # VAEDecode starts
            pass
        assert httpx.post(sim.url + "/interrupt", json={"prompt_id": pid}).status_code == 200
        frames = await until_done(ws, pid)
        assert [f["type"] for f in frames] == ["progress_state", "progress_state", "executing",
                                               "execution_interrupted", "status", "executing"]  # fmt: skip
        assert frames[0]["data"]["nodes"]["8"]["state"] == "finished"  # the decode ran to its end
        assert frames[2]["data"]["node"] == "9"
        interrupted = frames[3]["data"]
        assert (interrupted["node_id"], interrupted["node_type"]) == ("9", "SaveImage")
        assert sorted(interrupted["executed"]) == ["3", "4", "5", "6", "7", "8"]
        entry = history(sim, pid)[pid]
        assert entry["outputs"] == {} and entry["status"]["status_str"] == "error"
        assert entry["status"]["messages"][-1][0] == "execution_interrupted"
        assert not list(sim.output_dir.rglob("*.png"))
        next_pid = post(sim, {"prompt": txt2img(steps=2, seed=5), "client_id": CLIENT}).json()["prompt_id"]
        assert (await until_done(ws, next_pid))[-3]["type"] == "execution_success"
        await ws.close()


def test_slow_start_is_not_listening_at_first(tmp_path: Path) -> None:
    sim = start_sim(tmp_path, slow_start_seconds=2.0, wait=False)
    try:
        wait_for(lambda: "slow start" in sim.log_text(), what="slow start logged")
        with pytest.raises(httpx.ConnectError):
            httpx.get(sim.url + "/system_stats")
        sim.wait_ready()
    finally:
        sim.stop()


# --- files -----------------------------------------------------------------------------------------
def _png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buf, format="PNG")
    return buf.getvalue()


async def test_upload_rules_and_loadimage_round_trip(sim: SimProcess) -> None:
    url = sim.url + "/upload/image"
    red, blue = _png((255, 0, 0)), _png((0, 0, 255))

    def upload(data: bytes, **fields: str) -> httpx.Response:
        return httpx.post(url, files={"image": ("probe_upload.png", data, "image/png")}, data=fields)

    cap = capture("post_upload_image.json")
    assert upload(red).json() == cap["first"]["body"]
    assert upload(red).json() == cap["same_name_same_bytes"]["body"]
    assert upload(blue).json() == cap["same_name_different_bytes"]["body"]
    assert upload(blue, overwrite="true").json() == cap["same_name_different_bytes_overwrite_true"]["body"]
    assert upload(red, subfolder="probe_sub", type="input").json() == cap["with_subfolder_and_type_input"]["body"]
    assert upload(red, type="temp").json() == cap["type_temp"]["body"]
    for r in (httpx.post(url, data={"x": "1"}), upload(red, subfolder="../..")):
        assert (r.status_code, r.content, r.headers.get("Content-Type")) == (400, b"", None)

    info = httpx.get(sim.url + "/object_info/LoadImage").json()
    assert info == capture("get_object_info_LoadImage_after_upload.json")["body"]

    for name, expected in (("probe_upload.png", (255, 255, 0)), ("probe_sub/probe_upload.png", (0, 255, 255))):
        prompt = {
            "1": {"class_type": "LoadImage", "inputs": {"image": name}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "probe/loaded"}},
        }
        pid = post(sim, {"prompt": prompt}).json()["prompt_id"]
        wait_for(functools.partial(history, sim, pid), what="history")
        out = history(sim, pid)[pid]["outputs"]["3"]["images"][0]
        r = httpx.get(sim.url + "/view", params=out)
        with Image.open(io.BytesIO(r.content)) as img:
            assert img.getpixel((0, 0)) == expected


def test_view_rules(sim: SimProcess) -> None:
    pid = post(sim, REQUEST).json()["prompt_id"]
    wait_for(lambda: history(sim, pid), what="history")
    view = sim.url + "/view"
    r = httpx.get(view, params={"filename": "basic_00001_.png", "subfolder": "probe", "type": "output"})
    cap = capture("get_view_basic.json")
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/png"
    assert r.headers["Content-Disposition"] == cap["headers"]["Content-Disposition"]
    assert {"Etag", "Last-Modified", "Accept-Ranges"} <= set(cap["headers"]) and "etag" in r.headers
    assert "last-modified" in r.headers and r.headers["accept-ranges"] == "bytes"
    with Image.open(io.BytesIO(r.content)) as img:
        assert img.getpixel((0, 0)) == (0, 255, 255) and img.size == (64, 64)
        assert json.loads(img.text["prompt"]) == REQUEST["prompt"]  # type: ignore[attr-defined]
    preview = httpx.get(view, params={"filename": "basic_00001_.png", "subfolder": "probe", "preview": "webp;50"})
    assert preview.headers["Content-Type"] == "image/webp" and preview.content[8:12] == b"WEBP"
    cases = [
        ({"filename": "nope.png"}, 404),
        ({}, 404),
        ({"filename": "../x.png"}, 400),
        ({"filename": "/etc/passwd"}, 400),
        ({"filename": "basic_00001_.png", "type": "bogus"}, 400),
        ({"filename": "basic_00001_.png", "subfolder": "../.."}, 403),
    ]
    for params, status in cases:
        r = httpx.get(view, params=params)
        assert (r.status_code, r.content, r.headers.get("Content-Type")) == (status, b"", None), params


# --- HTTP shapes -----------------------------------------------------------------------------------
def test_validation_errors_are_400_and_use_up_a_number(sim: SimProcess) -> None:
    cases = capture("post_prompt_invalid.json")
    for case in ("missing_required_input", "unknown_class_type", "no_prompt_key", "value_below_min"):
        r = post(sim, cases[case]["request"])
        assert r.status_code == 400 and r.headers["Content-Type"] == "application/json; charset=utf-8"
        assert r.json() == cases[case]["response"]["body"]
    assert post(sim, REQUEST).json()["number"] == 4


def test_malformed_json_is_a_plain_500(sim: SimProcess) -> None:
    expected = capture("post_prompt_invalid.json")["non_json_body"]["response"]
    r = httpx.post(sim.url + "/prompt", content=b"{not json", headers={"Content-Type": "application/json"})
    assert (r.status_code, r.text) == (500, expected["body_text"])
    assert r.headers["Content-Type"] == expected["content_type"]
    assert httpx.get(sim.url + "/prompt").status_code == 200  # still serving


def test_origin_check_options_and_api_prefix(idle_sim: SimProcess) -> None:
    sim = idle_sim
    host = f"{sim.host}:{sim.port}"
    evil = httpx.get(sim.url + "/system_stats", headers={"Origin": "http://evil.example"})
    assert (evil.status_code, evil.content) == (403, b"")
    same = httpx.get(sim.url + "/system_stats", headers={"Origin": f"http://{host}"})
    assert same.status_code == 200
    assert httpx.options(sim.url + "/prompt").status_code == 200
    assert httpx.get(sim.url + "/api/system_stats").status_code == 200
    for path in ("/queue", "/history", "/object_info/EmptyImage", "/features", "/embeddings"):
        assert httpx.get(sim.url + "/api" + path).json() == httpx.get(sim.url + path).json()


async def test_api_prefixed_websocket(idle_sim: SimProcess) -> None:
    sim = idle_sim
    async with websockets.connect(f"{sim.ws_url.replace('/ws', '/api/ws')}") as ws:
        hello = await recv(ws)
        assert hello["type"] == "status" and re.fullmatch(r"[0-9a-f]{32}", hello["data"]["sid"])


@pytest.mark.parametrize(
    "path, name",
    [("/features", "get_features.json"), ("/models", "get_models.json"), ("/embeddings", "get_embeddings.json"),
     ("/prompt", "get_prompt_idle.json"), ("/queue", "get_queue_idle.json"),
     ("/object_info/NoSuchNode", "get_object_info_unknown.json"),
     ("/object_info/EmptyImage", "get_object_info_EmptyImage.json"),
     ("/object_info/ImageBlur", "get_object_info_ImageBlur.json"),
     ("/object_info/SaveImage", "get_object_info_SaveImage.json"),
     ("/history/00000000-0000-0000-0000-000000000000", "get_history_unknown_id.json")],
)  # fmt: skip
def test_info_endpoints_match_captures(idle_sim: SimProcess, path: str, name: str) -> None:
    sim = idle_sim
    expected = capture(name)
    r = httpx.get(sim.url + path)
    assert (r.status_code, r.headers["Content-Type"]) == (200, expected["content_type"])
    assert json.dumps(r.json()) == json.dumps(expected["body"])


def test_system_stats_shape_and_model_lists(tmp_path: Path) -> None:
    with running_sim(tmp_path, checkpoints=["a.safetensors", "b.ckpt"], loras=["l.safetensors"]) as sim:
        stats = httpx.get(sim.url + "/system_stats").json()
        expected = capture("get_system_stats.json")["body"]
        assert list(stats) == list(expected) and list(stats["system"]) == list(expected["system"])
        assert list(stats["devices"][0]) == list(expected["devices"][0])
        assert stats["system"]["comfyui_version"] == "0.3.64"
        assert httpx.get(sim.url + "/models/checkpoints").json() == ["a.safetensors", "b.ckpt"]
        assert httpx.get(sim.url + "/models/loras").json() == ["l.safetensors"]
        assert httpx.get(sim.url + "/models/nope").status_code == 404
        info = httpx.get(sim.url + "/object_info").json()
        assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == ["a.safetensors", "b.ckpt"]
        bad = copy.deepcopy(txt2img())
        bad["4"]["inputs"]["ckpt_name"] = "sd_xl_base_1.0.safetensors"
        r = post(sim, {"prompt": bad})
        assert r.status_code == 400
        assert r.json()["node_errors"]["4"]["errors"][0]["type"] == "value_not_in_list"


def test_free_endpoint(idle_sim: SimProcess) -> None:
    sim = idle_sim
    r = httpx.post(sim.url + "/free", json={"unload_models": True, "free_memory": True})
    assert (r.status_code, r.content, r.headers.get("Content-Type")) == (200, b"", None)
