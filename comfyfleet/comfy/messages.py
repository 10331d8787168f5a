"""Typed ComfyUI websocket messages and their parsing (pure, no I/O).

Text frames are `{"type": <str>, "data": {...}}`; binary frames start with a 4-byte big-endian
event type (README section 6). Unknown types become `UnknownEvent` / `UnknownBinary`, never errors.
"""

from __future__ import annotations

import json
import logging
import struct
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

log = logging.getLogger(__name__)


class ComfyEvent:
    """Base of every message the websocket delivers (and of the client's own WatchdogCheck)."""

    __slots__ = ()
    type: ClassVar[str] = ""

    @property
    def event_prompt_id(self) -> str | None:
        """The prompt this event is about, or None for broadcasts and id-less frames."""
        return getattr(self, "prompt_id", None)


@dataclass(frozen=True, slots=True)
class Status(ComfyEvent):
    """Broadcast queue size; the first frame of every connection also carries our sid."""

    type: ClassVar[str] = "status"
    queue_remaining: int | None
    sid: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class ExecutionStart(ComfyEvent):
    type: ClassVar[str] = "execution_start"
    prompt_id: str | None = None
    timestamp: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class ExecutionCached(ComfyEvent):
    type: ClassVar[str] = "execution_cached"
    nodes: list[str] = field(default_factory=list)
    prompt_id: str | None = None
    timestamp: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Executing(ComfyEvent):
    """A node starts; `node is None` with our prompt_id is the real end-of-prompt marker."""

    type: ClassVar[str] = "executing"
    node: str | None
    prompt_id: str | None = None
    display_node: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Progress(ComfyEvent):
    type: ClassVar[str] = "progress"
    value: float
    max: float
    node: str | None = None
    prompt_id: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class NodeProgress:
    """One node's entry in a progress_state frame."""

    node_id: str
    value: float
    max: float
    state: str
    display_node_id: str | None = None
    parent_node_id: str | None = None
    real_node_id: str | None = None


@dataclass(frozen=True, slots=True)
class ProgressState(ComfyEvent):
    type: ClassVar[str] = "progress_state"
    nodes: dict[str, NodeProgress] = field(default_factory=dict)
    prompt_id: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Executed(ComfyEvent):
    """A node with UI output finished; `output` is e.g. {"images": [{filename, subfolder, type}]}."""

    type: ClassVar[str] = "executed"
    node: str
    output: dict[str, Any] = field(default_factory=dict)
    prompt_id: str | None = None
    display_node: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class ExecutionSuccess(ComfyEvent):
    type: ClassVar[str] = "execution_success"
    prompt_id: str | None = None
    timestamp: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class ExecutionError(ComfyEvent):
    """A node raised at runtime; also the `error` of a failed RunResult."""

    type: ClassVar[str] = "execution_error"
    node_id: str | None
    node_type: str | None
    exception_type: str
    exception_message: str
    traceback: list[str] = field(default_factory=list)
    prompt_id: str | None = None
    executed: list[str] = field(default_factory=list)
    current_inputs: dict[str, Any] = field(default_factory=dict, repr=False)
    timestamp: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_oom(self) -> bool:
        """True for out-of-memory failures: the pod is kept after POST /free (README section 8)."""
        return "out of memory" in self.exception_message.lower() or self.exception_type.endswith(
            "OutOfMemoryError"
        )


@dataclass(frozen=True, slots=True)
class ExecutionInterrupted(ComfyEvent):
    type: ClassVar[str] = "execution_interrupted"
    node_id: str | None = None
    node_type: str | None = None
    executed: list[str] = field(default_factory=list)
    prompt_id: str | None = None
    timestamp: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class FeatureFlags(ComfyEvent):
    type: ClassVar[str] = "feature_flags"
    flags: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class UnknownEvent(ComfyEvent):
    """A text frame of a type we do not model (custom nodes send their own)."""

    type: str  # type: ignore[misc]  # an instance field here, unlike the typed events
    data: Any = None
    prompt_id: str | None = None


@dataclass(frozen=True, slots=True)
class PreviewImage(ComfyEvent):
    """Binary preview (type 1, or 4 with metadata). image_type is "jpeg", "png" or a mime type."""

    type: ClassVar[str] = "preview_image"
    image_type: str
    image: bytes = field(repr=False)
    node_id: str | None = None
    prompt_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TextPreview(ComfyEvent):
    """Binary type 3: text a node streams to the UI."""

    type: ClassVar[str] = "text"
    node_id: str
    text: str


@dataclass(frozen=True, slots=True)
class UnknownBinary(ComfyEvent):
    type: ClassVar[str] = "binary"
    event_type: int
    payload: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class WatchdogCheck(ComfyEvent):
    """Client-made, not from the wire: the socket was silent and polling found the prompt still queued."""

    type: ClassVar[str] = "watchdog_check"
    prompt_id: str
    state: Literal["pending", "running"]
    silent_for: float


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _str_list(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def as_dict(value: Any) -> dict[str, Any]:
    """value when the server sent an object there, else {} (a field a newer or older server shapes otherwise)."""
    return value if isinstance(value, dict) else {}


def _node_progress(node_id: str, item: Any) -> NodeProgress:
    item = item if isinstance(item, dict) else {}
    return NodeProgress(
        node_id=str(item.get("node_id", node_id)),
        value=float(item.get("value", 0) or 0),
        max=float(item.get("max", 0) or 0),
        state=str(item.get("state", "")),
        display_node_id=_str_or_none(item.get("display_node_id")),
        parent_node_id=_str_or_none(item.get("parent_node_id")),
        real_node_id=_str_or_none(item.get("real_node_id")),
    )


def execution_error_from(data: dict[str, Any]) -> ExecutionError:
    """Build an ExecutionError from an execution_error payload (websocket or history message)."""
    traceback = data.get("traceback")
    return ExecutionError(
        node_id=_str_or_none(data.get("node_id")),
        node_type=_str_or_none(data.get("node_type")),
        exception_type=str(data.get("exception_type") or ""),
        exception_message=str(data.get("exception_message") or ""),
        traceback=[str(t) for t in traceback] if isinstance(traceback, list) else [],
        prompt_id=_str_or_none(data.get("prompt_id")),
        executed=_str_list(data.get("executed")),
        current_inputs=as_dict(data.get("current_inputs")),
        timestamp=data.get("timestamp"),
        raw=data,
    )


def execution_interrupted_from(data: dict[str, Any]) -> ExecutionInterrupted:
    """Build an ExecutionInterrupted from its payload (websocket or history message)."""
    return ExecutionInterrupted(
        node_id=_str_or_none(data.get("node_id")),
        node_type=_str_or_none(data.get("node_type")),
        executed=_str_list(data.get("executed")),
        prompt_id=_str_or_none(data.get("prompt_id")),
        timestamp=data.get("timestamp"),
        raw=data,
    )


def parse_message(message: Any) -> ComfyEvent:
    """Turn one decoded text frame `{"type", "data"}` into a typed event."""
    if not isinstance(message, dict):
        return UnknownEvent(type="", data=message)
    kind = str(message.get("type", ""))
    data = message.get("data")
    if not isinstance(data, dict):
        return UnknownEvent(type=kind, data=data)
    pid = _str_or_none(data.get("prompt_id"))
    try:
        return _parse_known(kind, data, pid)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        log.warning("malformed %r frame, passing it on as unknown: %s", kind, exc)
        return UnknownEvent(type=kind, data=data, prompt_id=pid)


def _parse_known(kind: str, data: dict[str, Any], pid: str | None) -> ComfyEvent:
    if kind == "status":
        exec_info = (data.get("status") or {}).get("exec_info") or {}
        return Status(queue_remaining=exec_info.get("queue_remaining"), sid=data.get("sid"), raw=data)
    if kind == "execution_start":
        return ExecutionStart(prompt_id=pid, timestamp=data.get("timestamp"), raw=data)
    if kind == "execution_cached":
        return ExecutionCached(_str_list(data.get("nodes")), pid, data.get("timestamp"), raw=data)
    if kind == "executing":
        return Executing(
            _str_or_none(data.get("node")), pid, _str_or_none(data.get("display_node")), raw=data
        )
    if kind == "progress":
        return Progress(
            float(data["value"]), float(data["max"]), _str_or_none(data.get("node")), pid, raw=data
        )
    if kind == "progress_state":
        nodes = data.get("nodes") or {}
        parsed = {str(k): _node_progress(str(k), v) for k, v in nodes.items()}
        return ProgressState(parsed, pid, raw=data)
    if kind == "executed":
        node, output = str(data["node"]), as_dict(data.get("output"))
        return Executed(node, output, pid, _str_or_none(data.get("display_node")), raw=data)
    if kind == "execution_success":
        return ExecutionSuccess(prompt_id=pid, timestamp=data.get("timestamp"), raw=data)
    if kind == "execution_error":
        return execution_error_from(data)
    if kind == "execution_interrupted":
        return execution_interrupted_from(data)
    if kind == "feature_flags":
        return FeatureFlags(flags=data)
    return UnknownEvent(type=kind, data=data, prompt_id=pid)


def parse_text_frame(text: str | bytes) -> ComfyEvent:
    """Decode and parse one websocket text frame; undecodable JSON becomes an UnknownEvent."""
    try:
        return parse_message(json.loads(text))
    except ValueError:
        log.warning("undecodable websocket text frame: %.200r", text)
        return UnknownEvent(type="", data=text)


_IMAGE_TYPES = {1: "jpeg", 2: "png"}


def parse_binary_frame(frame: bytes) -> ComfyEvent:
    """Parse a binary frame: 4-byte big-endian event type, then the type's payload."""
    if len(frame) < 4:
        return UnknownBinary(event_type=-1, payload=frame)
    (event_type,) = struct.unpack(">I", frame[:4])
    body = frame[4:]
    try:
        if event_type == 1 and len(body) >= 4:
            (image_type,) = struct.unpack(">I", body[:4])
            return PreviewImage(image_type=_IMAGE_TYPES.get(image_type, str(image_type)), image=body[4:])
        if event_type == 3 and len(body) >= 4:
            (n,) = struct.unpack(">I", body[:4])
            node_id = body[4 : 4 + n].decode()
            return TextPreview(node_id=node_id, text=body[4 + n :].decode(errors="replace"))
        if event_type == 4 and len(body) >= 4:
            (n,) = struct.unpack(">I", body[:4])
            meta = json.loads(body[4 : 4 + n])
            meta = meta if isinstance(meta, dict) else {}
            return PreviewImage(
                image_type=str(meta.get("image_type", "")),
                image=body[4 + n :],
                node_id=_str_or_none(meta.get("node_id")),
                prompt_id=_str_or_none(meta.get("prompt_id")),
                metadata=meta,
            )
    except (ValueError, UnicodeDecodeError) as exc:
        log.warning("malformed binary frame of type %d: %s", event_type, exc)
    return UnknownBinary(event_type=event_type, payload=body)


def parse_frame(frame: str | bytes) -> ComfyEvent:
    """Parse a frame as the websocket library hands it over (str for text, bytes for binary)."""
    return parse_text_frame(frame) if isinstance(frame, str) else parse_binary_frame(frame)
