"""Result types of the ComfyUI client and the pure parsers that build them from HTTP bodies."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from comfyfleet.comfy.errors import ComfyProtocolError, ComfyValidationError
from comfyfleet.comfy.messages import (
    ExecutionError,
    ExecutionInterrupted,
    as_dict,
    execution_error_from,
    execution_interrupted_from,
)

RunStatus = Literal["success", "error", "interrupted"]


@dataclass(frozen=True, slots=True)
class OutputRef:
    """One file a node produced, fetchable with GET /view; kind is the output key ("images", "gifs")."""

    node_id: str
    filename: str
    subfolder: str
    type: str
    kind: str = "images"


@dataclass(frozen=True, slots=True)
class InputError:
    """One entry of node_errors[<id>].errors in a 400 from POST /prompt."""

    type: str
    message: str
    details: str = ""
    input_name: str | None = None
    extra_info: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class NodeError:
    node_id: str
    class_type: str | None
    errors: list[InputError] = field(default_factory=list)
    dependent_outputs: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """POST /prompt answered 200; node_errors lists outputs that failed while others were queued."""

    prompt_id: str
    number: int | float
    node_errors: list[NodeError] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class UploadedImage:
    """Answer of POST /upload/image; use `load_image_value` as LoadImage's `image` input."""

    name: str
    subfolder: str
    type: str

    @property
    def load_image_value(self) -> str:
        return f"{self.subfolder}/{self.name}" if self.subfolder else self.name


@dataclass(frozen=True, slots=True)
class PodModels:
    checkpoints: list[str] = field(default_factory=list)
    loras: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """One /queue item, from the 5-element list [number, prompt_id, prompt, extra_data, outputs]."""

    number: int | float
    prompt_id: str
    client_id: str | None
    output_node_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class QueueState:
    running: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    running_entries: list[QueueEntry] = field(default_factory=list, repr=False)
    pending_entries: list[QueueEntry] = field(default_factory=list, repr=False)

    def find(self, prompt_id: str) -> QueueEntry | None:
        """The entry for prompt_id, running or pending, or None."""
        for entry in (*self.running_entries, *self.pending_entries):
            if entry.prompt_id == prompt_id:
                return entry
        return None

    def __contains__(self, prompt_id: object) -> bool:
        return prompt_id in self.running or prompt_id in self.pending


@dataclass(frozen=True, slots=True)
class RunResult:
    prompt_id: str
    status: RunStatus
    outputs: list[OutputRef] = field(default_factory=list)
    error: ExecutionError | None = None
    cached_nodes: list[str] = field(default_factory=list)
    interrupted: ExecutionInterrupted | None = None
    submitted: SubmitResult | None = None  # None when run(resume=True) attached to an existing prompt
    # The /history status messages (execution_start ... with the pod's own timestamps); empty when the result
    # was built from websocket events alone.
    messages: list[tuple[str, dict[str, Any]]] = field(default_factory=list, repr=False)


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """A finished prompt as GET /history/{id} reports it."""

    prompt_id: str
    number: int | float | None
    status_str: str
    completed: bool
    outputs: list[OutputRef] = field(default_factory=list)
    messages: list[tuple[str, dict[str, Any]]] = field(default_factory=list, repr=False)
    client_id: str | None = None
    raw_outputs: dict[str, Any] = field(default_factory=dict, repr=False)

    def _message(self, kind: str) -> dict[str, Any] | None:
        return next((data for name, data in self.messages if name == kind), None)

    @property
    def error(self) -> ExecutionError | None:
        data = self._message("execution_error")
        return execution_error_from(data) if data is not None else None

    @property
    def interrupted(self) -> ExecutionInterrupted | None:
        data = self._message("execution_interrupted")
        return execution_interrupted_from(data) if data is not None else None

    @property
    def cached_nodes(self) -> list[str]:
        data = self._message("execution_cached") or {}
        return [str(n) for n in data.get("nodes") or []]

    @property
    def status(self) -> RunStatus:
        """success / interrupted / error; an interrupt shows as status_str "error" plus its message."""
        if self.interrupted is not None:
            return "interrupted"
        if self.status_str == "success":
            return "success"
        return "error"

    def to_run_result(self, submitted: SubmitResult | None = None) -> RunResult:
        error = self.error
        status = self.status
        if status == "error" and error is None:
            error = ExecutionError(
                node_id=None,
                node_type=None,
                exception_type="unknown",
                exception_message=f"history status_str {self.status_str!r} without an execution_error",
                prompt_id=self.prompt_id,
            )
        return RunResult(
            prompt_id=self.prompt_id,
            status=status,
            outputs=list(self.outputs),
            error=error,
            cached_nodes=self.cached_nodes,
            interrupted=self.interrupted,
            submitted=submitted,
            messages=list(self.messages),
        )


def parse_outputs(outputs: Any) -> list[OutputRef]:
    """Flatten {node_id: {kind: [{filename, subfolder, type}, ...]}} into OutputRefs.

    Entries without a filename (e.g. SaveAnimatedWEBP's "animated": [true], text outputs) are skipped.
    """
    refs: list[OutputRef] = []
    if not isinstance(outputs, dict):
        return refs
    for node_id, by_kind in outputs.items():
        if not isinstance(by_kind, dict):
            continue
        for kind, items in by_kind.items():
            for item in items if isinstance(items, list) else []:
                if isinstance(item, dict) and "filename" in item:
                    refs.append(
                        OutputRef(
                            node_id=str(node_id),
                            filename=str(item["filename"]),
                            subfolder=str(item.get("subfolder") or ""),
                            type=str(item.get("type") or "output"),
                            kind=str(kind),
                        )
                    )
    return refs


def parse_history_entry(prompt_id: str, entry: dict[str, Any]) -> HistoryEntry:
    """Parse one value of the GET /history map."""
    prompt = entry.get("prompt") or []
    number = prompt[0] if isinstance(prompt, list) and prompt else None
    extra = prompt[3] if isinstance(prompt, list) and len(prompt) > 3 and isinstance(prompt[3], dict) else {}
    status = entry.get("status") or {}
    messages = [
        (str(m[0]), m[1] if isinstance(m[1], dict) else {})
        for m in status.get("messages") or []
        if isinstance(m, list | tuple) and len(m) == 2
    ]
    return HistoryEntry(
        prompt_id=prompt_id,
        number=number,
        status_str=str(status.get("status_str") or ""),
        completed=bool(status.get("completed")),
        outputs=parse_outputs(entry.get("outputs")),
        messages=messages,
        client_id=extra.get("client_id"),
        raw_outputs=entry.get("outputs") or {},
    )


def parse_history(prompt_id: str, body: Any) -> HistoryEntry | None:
    """GET /history/{id} body -> entry, or None for `{}` (unknown, deleted or not finished yet)."""
    if not isinstance(body, dict):
        raise ComfyProtocolError(f"/history/{prompt_id} answered {type(body).__name__}, not an object")
    entry = body.get(prompt_id)
    return parse_history_entry(prompt_id, entry) if isinstance(entry, dict) else None


def _queue_entry(item: Any) -> QueueEntry:
    if not isinstance(item, list) or len(item) < 2:
        raise ComfyProtocolError(f"unexpected /queue entry: {item!r:.200}")
    extra = item[3] if len(item) > 3 and isinstance(item[3], dict) else {}
    outputs = item[4] if len(item) > 4 and isinstance(item[4], list) else []
    return QueueEntry(
        number=item[0], prompt_id=str(item[1]), client_id=extra.get("client_id"), output_node_ids=outputs
    )


def parse_queue(body: Any) -> QueueState:
    """GET /queue body -> QueueState (pending in queue order)."""
    if not isinstance(body, dict):
        raise ComfyProtocolError(f"/queue answered {type(body).__name__}, not an object")
    running = [_queue_entry(i) for i in body.get("queue_running") or []]
    pending = [_queue_entry(i) for i in body.get("queue_pending") or []]
    return QueueState(
        running=[e.prompt_id for e in running],
        pending=[e.prompt_id for e in pending],
        running_entries=running,
        pending_entries=pending,
    )


def parse_node_errors(node_errors: Any) -> list[NodeError]:
    """The node_errors map of a POST /prompt answer -> NodeErrors, in the server's order."""
    result: list[NodeError] = []
    if not isinstance(node_errors, dict):
        return result
    for node_id, info in node_errors.items():
        info = info if isinstance(info, dict) else {}
        errors = []
        for err in info.get("errors") or []:
            if not isinstance(err, dict):
                continue
            extra = as_dict(err.get("extra_info"))
            errors.append(
                InputError(
                    type=str(err.get("type") or ""),
                    message=str(err.get("message") or ""),
                    details=str(err.get("details") or ""),
                    input_name=extra.get("input_name"),
                    extra_info=extra,
                )
            )
        result.append(
            NodeError(
                node_id=str(node_id),
                class_type=info.get("class_type"),
                errors=errors,
                dependent_outputs=[str(o) for o in info.get("dependent_outputs") or []],
            )
        )
    return result


def parse_submit(body: Any) -> SubmitResult:
    """A 200 body of POST /prompt -> SubmitResult."""
    if not isinstance(body, dict) or "prompt_id" not in body:
        raise ComfyProtocolError(f"POST /prompt answered 200 with {body!r:.200}")
    return SubmitResult(
        prompt_id=str(body["prompt_id"]),
        number=body.get("number", -1),
        node_errors=parse_node_errors(body.get("node_errors")),
    )


def validation_error_from(body: Any) -> ComfyValidationError:
    """A 400 JSON body of POST /prompt -> ComfyValidationError."""
    body = body if isinstance(body, dict) else {}
    error = body.get("error")
    if isinstance(error, str):  # older servers answered {"error": "<message>"}
        error = {"type": "invalid_prompt", "message": error}
    error = error if isinstance(error, dict) else {}
    return ComfyValidationError(
        error_type=str(error.get("type") or "invalid_prompt"),
        message=str(error.get("message") or "prompt rejected"),
        details=str(error.get("details") or ""),
        node_errors=parse_node_errors(body.get("node_errors")),
        extra_info=error.get("extra_info") if isinstance(error.get("extra_info"), dict) else {},
    )


@dataclass(frozen=True, slots=True)
class ComboInput:
    """A COMBO input of /object_info: its listed choices and how the server checks a value against them."""

    options: list[Any]
    # Newer servers (after 0.3.64): a multiselect COMBO takes a list of choices; a remote COMBO's
    # choices are fetched by the browser, so the server lists none and does not check the value.
    multiselect: bool = False
    remote: bool = False

    def rejected(self, value: Any) -> list[Any]:
        """The values ComfyUI would refuse as "value_not_in_list" ([] when it accepts `value`)."""
        if self.remote:
            return []
        values = value if self.multiselect and isinstance(value, list) else [value]
        return [v for v in values if v not in self.options]


def combo_input(spec: Any) -> ComboInput | None:
    """The COMBO an /object_info input spec declares, or None when it is another type.

    Both catalog forms: the old [["a", "b"], {...}] and the newer ["COMBO", {"options": [...]}].
    Values are as the server lists them (usually strings); empty options is a COMBO with no choice.
    """
    if not isinstance(spec, list | tuple) or not spec:
        return None
    head = spec[0]
    extra = as_dict(spec[1]) if len(spec) > 1 else {}
    if isinstance(head, list | tuple):
        options = list(head)
    elif head == "COMBO":
        listed = extra.get("options")
        options = list(listed) if isinstance(listed, list | tuple) else []
    else:
        return None
    return ComboInput(options, multiselect=bool(extra.get("multiselect")), remote=bool(extra.get("remote_combo")))


def combo_options(spec: Any) -> list[Any] | None:
    """Choices of an /object_info input spec, or None when it is not a COMBO (see `combo_input`)."""
    combo = combo_input(spec)
    return None if combo is None else combo.options


def literal_value(value: Any) -> Any:
    """A widget value as ComfyUI validates it: {"__value__": v} wraps a list value so it is not read as a link."""
    if isinstance(value, dict) and "__value__" in value:
        return value["__value__"]
    return value


def node_input_options(object_info: Any, node_class: str, input_name: str) -> list[str]:
    """Choices of one input of node_class in an /object_info body; [] if the node or input is absent."""
    if not isinstance(object_info, dict):
        return []
    node = object_info.get(node_class)
    if not isinstance(node, dict):
        return []
    inputs = node.get("input") or {}
    for section in ("required", "optional"):
        spec = (inputs.get(section) or {}).get(input_name)
        if spec is not None:
            return [str(v) for v in combo_options(spec) or []]
    return []
