"""The executor's event stream, recorded in-process (no server), against the captured frame order."""

from __future__ import annotations

import copy
import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from comfyfleet.sim import executor as executor_module
from comfyfleet.sim.catalog import Models
from comfyfleet.sim.executor import Faults, InterruptFlag, PromptExecutor
from comfyfleet.sim.paths import DataDirs
from comfyfleet.sim.validate import validate_prompt
from tests.unit.sim.recorded import capture

REQUEST = capture("post_prompt_basic_request.json")


class RecordingHub:
    def __init__(self) -> None:
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.last_prompt_id: str | None = None
        self.frames: list[tuple[dict[str, Any], str | None]] = []
        self.on_send: Any = None

    def send(self, event: str, data: dict[str, Any], sid: str | None = None) -> None:
        self.frames.append(({"type": event, "data": copy.deepcopy(data)}, sid))
        if self.on_send:
            self.on_send(event, data)

    def flush(self, timeout: float) -> None:
        pass

    def take(self) -> list[dict[str, Any]]:
        frames, self.frames = [f for f, _ in self.frames], []
        return frames


def _normalise(obj: Any, prompt_id: str) -> Any:
    text = re.sub(r'"timestamp": \d+', '"timestamp": 0', json.dumps(obj).replace(prompt_id, "<id>"))
    return json.loads(text)


def _run(ex: PromptExecutor, prompt: dict, prompt_id: str, client_id: str | None = "probe-client-1") -> None:
    result = validate_prompt(prompt, ex.models, ex.dirs)
    assert result.ok, result
    ex.execute(prompt, prompt_id, {"client_id": client_id} if client_id else {}, result.outputs)


def _executor(models: Models, dirs: DataDirs, **faults: Any) -> tuple[PromptExecutor, RecordingHub, InterruptFlag]:
    hub, flag = RecordingHub(), InterruptFlag()
    return PromptExecutor(hub, models, dirs, Faults(**faults), flag), hub, flag


def _captured_execution_frames(name: str) -> tuple[list[dict], str]:
    cap = capture(name)
    frames = [m["json"] for m in cap["messages"]]
    # status frames and the final `executing` null come from the queue and worker, not the executor.
    return [f for f in frames if f["type"] != "status"][:-1], cap["prompt_id"]


def test_fresh_run_matches_capture(models: Models, dirs: DataDirs) -> None:
    ex, hub, _ = _executor(models, dirs)
    _run(ex, copy.deepcopy(REQUEST["prompt"]), "pid-1")
    expected, captured_id = _captured_execution_frames("ws_basic_run.json")
    assert _normalise(hub.take(), "pid-1") == _normalise(expected, captured_id)
    assert ex.success
    history = capture("get_history_basic.json")["body"][captured_id]
    assert _normalise(ex.history_result, "pid-1") == {"outputs": history["outputs"], "meta": history["meta"]}
    assert _normalise(ex.status_messages, "pid-1") == _normalise(history["status"]["messages"], captured_id)


def test_identical_rerun_is_served_from_cache(models: Models, dirs: DataDirs) -> None:
    ex, hub, _ = _executor(models, dirs)
    _run(ex, copy.deepcopy(REQUEST["prompt"]), "pid-1")
    hub.take()
    _run(ex, copy.deepcopy(REQUEST["prompt"]), "pid-2")
    expected, captured_id = _captured_execution_frames("ws_basic_rerun_cached.json")
    assert _normalise(hub.take(), "pid-2") == _normalise(expected, captured_id)
    assert sorted(p.name for p in (dirs.output / "probe").iterdir()) == ["basic_00001_.png"]


def test_cache_off_runs_again_with_a_new_filename(models: Models, dirs: DataDirs) -> None:
    ex, hub, _ = _executor(models, dirs, cache=False)
    _run(ex, copy.deepcopy(REQUEST["prompt"]), "pid-1")
    _run(ex, copy.deepcopy(REQUEST["prompt"]), "pid-2")
    assert ex.history_result["outputs"]["3"]["images"][0]["filename"] == "basic_00002_.png"


def test_only_the_last_prompt_is_cached(models: Models, dirs: DataDirs) -> None:
    ex, hub, _ = _executor(models, dirs)
    other = copy.deepcopy(REQUEST["prompt"])
    other["1"]["inputs"]["color"] = 255
    for prompt, pid in ((REQUEST["prompt"], "a"), (other, "b"), (REQUEST["prompt"], "c")):
        _run(ex, copy.deepcopy(prompt), pid)
    cached = [f for f in hub.take() if f["type"] == "execution_cached"]
    assert [f["data"]["nodes"] for f in cached] == [[], [], []]


def test_partly_cached_prompt_runs_only_changed_nodes(models: Models, dirs: DataDirs) -> None:
    ex, hub, _ = _executor(models, dirs)
    _run(ex, copy.deepcopy(REQUEST["prompt"]), "a")
    hub.take()
    prompt = copy.deepcopy(REQUEST["prompt"])
    prompt["3"]["inputs"]["filename_prefix"] = "probe/other"
    _run(ex, prompt, "b")
    frames = hub.take()
    assert frames[1]["data"]["nodes"] == ["1", "2"]
    assert [f["data"]["node"] for f in frames if f["type"] == "executing"] == ["3"]


def test_no_client_id_sends_no_execution_events(models: Models, dirs: DataDirs) -> None:
    ex, hub, _ = _executor(models, dirs)
    _run(ex, copy.deepcopy(REQUEST["prompt"]), "pid", client_id=None)
    assert hub.take() == [] and ex.success
    assert [m[0] for m in ex.status_messages] == ["execution_start", "execution_cached", "execution_success"]


def _txt2img(steps: int = 3, seed: int = 1) -> dict[str, Any]:
    return json.loads((Path(__file__).parents[3] / "examples" / "txt2img.json").read_text()) | {
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["4", 0], "seed": seed, "steps": steps, "cfg": 7.0, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0],
            "denoise": 1.0}},
    }  # fmt: skip


def test_sampler_reports_each_step(models: Models, dirs: DataDirs) -> None:
    ex, hub, _ = _executor(models, dirs)
    _run(ex, _txt2img(steps=3), "p")
    frames = hub.take()
    progress = [f["data"] for f in frames if f["type"] == "progress"]
    assert progress == [{"value": v, "max": 3, "prompt_id": "p", "node": "3"} for v in (1, 2, 3)]
    # Each progress frame follows a progress_state carrying the same numbers for the sampler.
    for i, f in enumerate(frames):
        if f["type"] == "progress":
            state = frames[i - 1]["data"]["nodes"]["3"]
            assert (state["value"], state["max"], state["state"]) == (f["data"]["value"], 3, "running")


def test_images_depend_on_seed_and_are_reproducible(models: Models, dirs: DataDirs) -> None:
    ex, _, _ = _executor(models, dirs, cache=False)

    def image(seed: int) -> bytes:
        _run(ex, _txt2img(seed=seed), f"s{seed}")
        out = ex.history_result["outputs"]["9"]["images"][0]
        with Image.open(dirs.output / out["subfolder"] / out["filename"]) as img:
            assert img.size == (1024, 1024) and json.loads(img.text["prompt"])  # type: ignore[attr-defined]  # a PngImageFile["3"]["inputs"]["seed"] == seed
            return img.tobytes()

    assert image(1) == image(1) != image(2)


def test_interrupt_lands_at_a_progress_callback(models: Models, dirs: DataDirs) -> None:
    ex, hub, flag = _executor(models, dirs)
    hub.on_send = lambda event, data: flag.set() if event == "progress" and data["value"] == 2 else None
    _run(ex, _txt2img(steps=10), "p")
    frames = hub.take()
    last = frames[-1]
    assert last["type"] == "execution_interrupted" and hub.frames == []
    assert last["data"]["node_id"] == "3" and last["data"]["node_type"] == "KSampler"
    assert sorted(last["data"]["executed"]) == ["4", "5", "6", "7"]
    assert [f["data"]["value"] for f in frames if f["type"] == "progress"] == [1, 2]
    assert not ex.success and ex.history_result == {"outputs": {}, "meta": {}}


def test_failure_rate_reports_an_oom_at_the_sampler(models: Models, dirs: DataDirs) -> None:
    ex, hub, _ = _executor(models, dirs, failure_rate=1.0)
    _run(ex, _txt2img(), "p")
    error = hub.take()[-1]
    assert error["type"] == "execution_error"
    data = error["data"]
    assert (data["node_id"], data["node_type"], data["exception_type"]) == ("3", "KSampler", "torch.OutOfMemoryError")
    assert "out of memory" in data["exception_message"] and data["exception_message"].endswith("large number.")
    assert data["current_inputs"]["seed"] == [1] and data["current_outputs"] == list(_txt2img())
    assert list(data) == ["prompt_id", "node_id", "node_type", "executed", "exception_message", "exception_type",
                          "traceback", "current_inputs", "current_outputs", "timestamp"]  # fmt: skip


def test_hang_blocks_inside_the_first_node(models: Models, dirs: DataDirs) -> None:
    ex, hub, _ = _executor(models, dirs, hang=True)
    worker = threading.Thread(target=_run, args=(ex, copy.deepcopy(REQUEST["prompt"]), "p"), daemon=True)
    worker.start()
    worker.join(0.5)
    assert worker.is_alive()
    assert [f["type"] for f in hub.take()][-2:] == ["progress_state", "executing"]


class _SleepThatInterrupts:
    """Stands in for the executor's clock: records each sleep and sets the interrupt flag inside it, as a
    POST /interrupt arriving while a long node runs would."""

    def __init__(self, flag: InterruptFlag):
        self.flag, self.interrupting = flag, True
        self.slept: list[float] = []
        self.time, self.perf_counter = time.time, time.perf_counter

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        if self.interrupting:
            self.flag.set()


@pytest.mark.parametrize(
    ("slow_class", "ends", "at_node", "executed"),
    [
        # Interrupted inside VAEDecode: the decode finishes, the interrupt lands as SaveImage starts.
        ("VAEDecode", "execution_interrupted", "9", ["3", "4", "5", "6", "7", "8"]),
        # Interrupted inside the last node: nothing is left to start, so the prompt succeeds (ComfyUI clears
        # the flag when the next prompt starts).
        ("SaveImage", "execution_success", None, None),
    ],
)
def test_slow_node_ignores_an_interrupt_until_the_next_node_boundary(
    models: Models, dirs: DataDirs, monkeypatch: pytest.MonkeyPatch,
    slow_class: str, ends: str, at_node: str | None, executed: list[str] | None,
) -> None:  # fmt: skip
    ex, hub, flag = _executor(models, dirs, slow_node_seconds=30.0, slow_node_class=slow_class)
    clock = _SleepThatInterrupts(flag)
    monkeypatch.setattr(executor_module, "time", clock)
    _run(ex, _txt2img(steps=2), "p")
    frames = hub.take()
    assert clock.slept == [30.0]
    assert frames[-1]["type"] == ends
    if at_node is not None:
        data = frames[-1]["data"]
        assert (data["node_id"], data["node_type"]) == (at_node, "SaveImage")
        assert sorted(data["executed"]) == executed
        assert not ex.success and ex.history_result == {"outputs": {}, "meta": {}}
        assert not any((dirs.output).rglob("*.png"))
    else:
        assert ex.success and ex.history_result["outputs"]["9"]["images"]
    clock.interrupting = False
    _run(ex, _txt2img(steps=2, seed=7), "next")  # the next prompt starts with the flag cleared
    assert hub.take()[-1]["type"] == "execution_success"


def test_slow_node_knob_off_by_default(models: Models, dirs: DataDirs, monkeypatch: pytest.MonkeyPatch) -> None:
    ex, hub, flag = _executor(models, dirs)
    clock = _SleepThatInterrupts(flag)
    monkeypatch.setattr(executor_module, "time", clock)
    _run(ex, _txt2img(steps=2), "p")
    assert clock.slept == [] and hub.take()[-1]["type"] == "execution_success"
