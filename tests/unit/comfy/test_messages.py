"""Websocket frames recorded from a real ComfyUI parse into the right typed events."""

from __future__ import annotations

import json
import struct

import pytest

from comfyfleet.comfy.messages import (
    Executed,
    Executing,
    ExecutionCached,
    ExecutionError,
    ExecutionInterrupted,
    ExecutionStart,
    ExecutionSuccess,
    FeatureFlags,
    PreviewImage,
    Progress,
    ProgressState,
    Status,
    TextPreview,
    UnknownBinary,
    UnknownEvent,
    parse_binary_frame,
    parse_frame,
    parse_message,
    parse_text_frame,
)
from tests.unit.comfy.recorded import CAPTURES, load_capture, ws_frames

TYPED = {
    "status": Status,
    "execution_start": ExecutionStart,
    "execution_cached": ExecutionCached,
    "executing": Executing,
    "progress": Progress,
    "progress_state": ProgressState,
    "executed": Executed,
    "execution_success": ExecutionSuccess,
    "execution_error": ExecutionError,
    "execution_interrupted": ExecutionInterrupted,
    "feature_flags": FeatureFlags,
}

CAPTURES_WITH_WS = sorted(p.name for p in CAPTURES.glob("*.json") if ws_frames(json.loads(p.read_text())))


def test_captures_with_websocket_logs_are_present():
    assert {"ws_basic_run.json", "interrupt_global.json", "runtime_error_run.json"} <= set(CAPTURES_WITH_WS)


@pytest.mark.parametrize("name", CAPTURES_WITH_WS)
def test_every_recorded_frame_parses_into_its_typed_event(name):
    for frame in ws_frames(load_capture(name)):
        message = frame["json"]
        event = parse_message(message)
        assert isinstance(event, TYPED[message["type"]]), (name, message)
        assert event.type == message["type"]
        if "prompt_id" in message["data"]:
            assert event.event_prompt_id == message["data"]["prompt_id"]
        # the same frame as the websocket hands it over (text)
        assert type(parse_frame(json.dumps(message))) is type(event)


def _events(name: str, key: str) -> list:
    return [parse_message(f["json"]) for f in ws_frames(load_capture(name)[key])]


def test_basic_run_in_order_ends_with_executing_null():
    capture = load_capture("ws_basic_run.json")
    pid = capture["prompt_id"]
    events = _events("ws_basic_run.json", "messages")
    kinds = [e.type for e in events]
    assert kinds[:4] == ["status", "status", "execution_start", "execution_cached"]
    assert kinds[-3:] == ["execution_success", "status", "executing"]
    done = events[-1]
    assert isinstance(done, Executing) and done.node is None and done.prompt_id == pid
    executing = [e.node for e in events if isinstance(e, Executing) and e.node is not None]
    assert executing == ["1", "2", "3"]
    (executed,) = [e for e in events if isinstance(e, Executed)]
    assert executed.node == "3"
    assert executed.output == {
        "images": [{"filename": "basic_00001_.png", "subfolder": "probe", "type": "output"}]
    }
    states = [e for e in events if isinstance(e, ProgressState)]
    assert states[0].nodes["1"].state == "running" and states[0].nodes["1"].max == 1.0
    assert states[-1].nodes["3"].state == "finished"
    assert isinstance(events[0], Status) and events[0].queue_remaining == 1


def test_cached_rerun_lists_cached_nodes_and_integer_progress():
    events = _events("ws_basic_rerun_cached.json", "messages")
    (cached,) = [e for e in events if isinstance(e, ExecutionCached)]
    assert cached.nodes == ["1", "2", "3"]
    (state,) = [e for e in events if isinstance(e, ProgressState)]
    assert state.nodes["3"].value == 1.0
    assert not [e for e in events if isinstance(e, Executing) and e.node is not None]


def test_runtime_error_frame_carries_node_and_exception():
    events = _events("runtime_error_run.json", "ws")
    (error,) = [e for e in events if isinstance(e, ExecutionError)]
    assert error.node_id == "2" and error.node_type == "LoadImage"
    assert error.exception_type == "PIL.UnidentifiedImageError"
    assert error.exception_message.startswith("cannot identify image file")
    assert error.traceback and all(isinstance(line, str) for line in error.traceback)
    assert error.current_inputs == {"image": ["corrupt.png"]}
    assert not error.is_oom
    assert not [e for e in events if isinstance(e, ExecutionSuccess)]


def test_interrupt_frame_names_the_node_about_to_run():
    events = _events("interrupt_global.json", "ws")
    (interrupted,) = [e for e in events if isinstance(e, ExecutionInterrupted)]
    assert interrupted.node_id == "12" and interrupted.node_type == "ImageBlur"
    assert interrupted.executed == ["10", "11", "1"]
    assert isinstance(events[-1], Executing) and events[-1].node is None


def test_hello_frames_carry_sid_and_feature_flags():
    with_id = [parse_message(f["json"]) for f in ws_frames(load_capture("ws_hello_with_clientId.json"))]
    assert with_id[0] == Status(queue_remaining=0, sid="probe-client-1")
    assert isinstance(with_id[1], FeatureFlags) and with_id[1].flags["supports_preview_metadata"] is True
    (anon,) = [parse_message(f["json"]) for f in ws_frames(load_capture("ws_hello_without_clientId.json"))]
    assert isinstance(anon, Status) and anon.sid and len(anon.sid) == 32


@pytest.mark.parametrize(
    ("message", "oom"),
    [
        ("CUDA out of memory. Tried to allocate 2.00 GiB", True),
        ("Allocation on device 0 would exceed allowed memory. (out of memory)", True),
        ("cannot identify image file", False),
    ],
)
def test_is_oom(message, oom):
    error = ExecutionError("3", "KSampler", "torch.cuda.OutOfMemoryError" if oom else "ValueError", message)
    assert error.is_oom is oom


def test_progress_frame_from_the_source_shape():
    event = parse_message(
        {"type": "progress", "data": {"value": 3, "max": 20, "prompt_id": "p", "node": "5"}}
    )
    assert event == Progress(value=3.0, max=20.0, node="5", prompt_id="p")


def test_unknown_and_malformed_frames_do_not_raise():
    custom = parse_message({"type": "crystools.monitor", "data": {"cpu_utilization": 3}})
    assert custom == UnknownEvent(type="crystools.monitor", data={"cpu_utilization": 3})
    assert isinstance(parse_message({"type": "executed", "data": {"output": {}}}), UnknownEvent)  # no node
    assert isinstance(parse_message({"type": "progress", "data": {"value": "x"}}), UnknownEvent)
    assert isinstance(parse_message(["not", "an", "object"]), UnknownEvent)
    assert isinstance(parse_text_frame("{not json"), UnknownEvent)
    assert isinstance(parse_message({"type": "status", "data": None}), UnknownEvent)


def test_binary_preview_without_metadata():
    frame = struct.pack(">II", 1, 1) + b"\xff\xd8jpeg"
    event = parse_binary_frame(frame)
    assert event == PreviewImage(image_type="jpeg", image=b"\xff\xd8jpeg")
    assert event.event_prompt_id is None
    assert parse_frame(struct.pack(">II", 1, 2) + b"png").image_type == "png"


def test_binary_preview_with_metadata():
    meta = {"node_id": "9", "prompt_id": "p1", "display_node_id": "9", "parent_node_id": None,
            "real_node_id": "9", "image_type": "image/png"}  # fmt: skip
    raw = json.dumps(meta).encode()
    frame = struct.pack(">II", 4, len(raw)) + raw + b"\x89PNG"
    event = parse_binary_frame(frame)
    assert isinstance(event, PreviewImage)
    assert (event.node_id, event.prompt_id, event.image_type, event.image) == (
        "9",
        "p1",
        "image/png",
        b"\x89PNG",
    )


def test_binary_text_and_unknown_and_truncated():
    frame = struct.pack(">II", 3, 2) + b"12" + "héllo".encode()
    assert parse_binary_frame(frame) == TextPreview(node_id="12", text="héllo")
    assert parse_binary_frame(struct.pack(">I", 77) + b"xyz") == UnknownBinary(event_type=77, payload=b"xyz")
    assert isinstance(parse_binary_frame(b"\x00\x01"), UnknownBinary)
    assert isinstance(parse_binary_frame(struct.pack(">II", 4, 50) + b"{"), UnknownBinary)
