"""The single prompt worker: runs one prompt at a time and emits ComfyUI's websocket events in order.

Follows ComfyUI's PromptExecutor.execute and main.prompt_worker: execution_start, execution_cached,
per node progress_state/executing/[progress]/[executed]/progress_state, then execution_success or
execution_error / execution_interrupted; history is written before the final `executing` null.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import random
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol

from PIL import Image

from comfyfleet.sim.catalog import NODE_CLASSES, Models
from comfyfleet.sim.graph import DependencyCycleError, ExecutionList, cache_keys, execution_order, is_link
from comfyfleet.sim.nodes import RUNNERS, NodeContext, NodeResult, new_temp_prefix
from comfyfleet.sim.paths import DataDirs, input_file_path
from comfyfleet.sim.prompt_queue import PromptQueue
from comfyfleet.sim.validate import full_type_name, input_info

log = logging.getLogger("comfyfleet.sim")

OOM_TIPS = (
    "This error means you ran out of memory on your GPU.\n\nTIPS: If the workflow worked before you might have "
    "accidentally set the batch_size to a large number."
)


class Hub(Protocol):
    """The server side the worker talks to (ComfyUI's PromptServer)."""

    client_id: str | None
    last_node_id: str | None
    last_prompt_id: str | None

    def send(self, event: str | int, data: Any, sid: str | None = None) -> None: ...

    def supports_preview_metadata(self, sid: str) -> bool: ...

    def flush(self, timeout: float) -> None: ...

    def crash(self) -> NoReturn:
        """End this pod abruptly (the crash knob): the process, or only this pod's sockets in a fleet."""
        ...


class InterruptProcessingException(Exception):
    """Raised at a node boundary or progress callback after POST /interrupt."""


InterruptProcessingException.__module__ = "comfy.model_management"


class PodCrashed(BaseException):
    """Unwinds a crashed pod's worker thread (fleet mode); a BaseException so no node error handler takes it."""


class OutOfMemoryError(RuntimeError):
    """The failure the failure_rate knob injects: what a GPU pod most often reports."""


OutOfMemoryError.__module__ = "torch"


class InterruptFlag:
    """ComfyUI's global interrupt_processing flag: set by /interrupt, cleared when it fires."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._set = False

    def set(self, value: bool = True) -> None:
        with self._lock:
            self._set = value

    def throw_if_set(self) -> None:
        with self._lock:
            if self._set:
                self._set = False
                raise InterruptProcessingException()


@dataclass(frozen=True)
class Faults:
    """Knobs that make the simulated pod slow or misbehave."""

    step_seconds: float = 0.0
    failure_rate: float = 0.0
    crash_after_steps: int = 0
    hang: bool = False
    cache: bool = True
    # ComfyUI's --preview-method: "none" (its default) sends no binary preview frames.
    preview_method: str = "none"
    # Nodes of this class take slow_node_seconds and honour no interrupt meanwhile (0 = off).
    slow_node_seconds: float = 0.0
    slow_node_class: str = "VAEDecode"


@dataclass
class _CacheEntry:
    outputs: tuple[Any, ...]
    ui: dict[str, Any] | None


class _NodeFailed(Exception):
    def __init__(self, node_id: str, details: dict[str, Any], ex: BaseException):
        super().__init__(node_id)
        self.node_id, self.details, self.ex = node_id, details, ex


# Binary websocket event types (ComfyUI's BinaryEventTypes).
PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _now_ms() -> int:
    return int(time.time() * 1000)


def _format_value(x: Any) -> Any:
    return x if x is None or isinstance(x, int | float | bool | str) else str(x)


@dataclass
class _Run:
    """State of one prompt's execution."""

    prompt_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    keys: dict[str, Hashable]
    fail_node: str | None
    results: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    executed: list[str] = field(default_factory=list)
    ui: dict[str, dict[str, Any]] = field(default_factory=dict)
    progress: dict[str, dict[str, Any]] = field(default_factory=dict)
    steps: int = 0


class PromptExecutor:
    """Runs prompts; keeps ComfyUI's classic output cache (only the last prompt's node signatures)."""

    def __init__(self, hub: Hub, models: Models, dirs: DataDirs, faults: Faults, interrupt: InterruptFlag):
        self.hub, self.models, self.dirs, self.faults, self.interrupt = hub, models, dirs, faults, interrupt
        self.cache: dict[Hashable, _CacheEntry] = {}
        self.temp_prefixes: dict[tuple[str, str], str] = {}
        self.rng = random.Random()
        self.success = False
        self.status_messages: list[list[Any]] = []
        self.history_result: dict[str, Any] = {"outputs": {}, "meta": {}}

    def reset(self) -> None:
        """Drop cached outputs (POST /free with free_memory)."""
        self.cache = {}

    def add_message(self, event: str, data: dict[str, Any], broadcast: bool) -> None:
        data = {**data, "timestamp": _now_ms()}
        self.status_messages.append([event, data])
        if broadcast:
            self.hub.send(event, data, None)
        elif self.hub.client_id is not None:
            self.hub.send(event, data, self.hub.client_id)

    def execute(self, prompt: dict[str, Any], prompt_id: str, extra_data: dict[str, Any], outputs: list[str]) -> None:
        self.interrupt.set(False)
        self.hub.client_id = extra_data.get("client_id")
        self.status_messages = []
        self.success = True
        self.add_message("execution_start", {"prompt_id": prompt_id}, broadcast=False)
        keys = cache_keys(prompt, lambda node_id: self._is_changed(prompt, node_id))
        if self.faults.cache:
            wanted = set(keys.values())
            self.cache = {k: v for k, v in self.cache.items() if k in wanted}
        else:
            self.cache = {}
        run = _Run(prompt_id, prompt, extra_data, keys, None)
        cached_nodes = [n for n in prompt if self._cached(run, n) is not None]
        self.add_message("execution_cached", {"nodes": cached_nodes, "prompt_id": prompt_id}, broadcast=False)
        if self.faults.failure_rate and self.rng.random() < self.faults.failure_rate:
            run.fail_node = self._pick_failure(run, outputs)

        plan = ExecutionList(prompt, lambda n: self._cached(run, n) is not None)
        for o in outputs:
            plan.add_node(o)
        try:
            while not plan.is_empty():
                try:
                    node_id = plan.next_node()
                except DependencyCycleError as ex:
                    details = {"exception_message": str(ex), "exception_type": "graph.DependencyCycleError",
                               "traceback": [], "current_inputs": []}  # fmt: skip
                    raise _NodeFailed(next(iter(plan.pending)), details, ex) from ex
                self._execute_node(run, node_id)
                plan.complete(node_id)
        except _NodeFailed as failure:
            self.success = False
            self._report_failure(run, failure)
        else:
            self.add_message("execution_success", {"prompt_id": prompt_id}, broadcast=False)
        self.history_result = self._history_result(run)
        self.hub.last_node_id = None

    def _is_changed(self, prompt: dict[str, Any], node_id: str) -> Any:
        node = prompt[node_id]
        if node["class_type"] != "LoadImage":
            return False
        try:
            return hashlib.sha256(input_file_path(node["inputs"]["image"], self.dirs).read_bytes()).hexdigest()
        except Exception as ex:  # noqa: BLE001 - ComfyUI logs and then never caches the node
            log.warning("WARNING: %s", ex)
            return object()

    def _cached(self, run: _Run, node_id: str) -> _CacheEntry | None:
        if not self.faults.cache or node_id not in run.keys:
            return None
        return self.cache.get(run.keys[node_id])

    def _pick_failure(self, run: _Run, outputs: list[str]) -> str | None:
        order = execution_order(run.prompt, outputs, lambda n: self._cached(run, n) is not None)
        for node_id in order:
            if run.prompt[node_id]["class_type"] == "KSampler":
                return node_id
        non_output = [n for n in order if not NODE_CLASSES[run.prompt[n]["class_type"]].output_node]
        candidates = non_output or order
        return candidates[0] if candidates else None

    def _execute_node(self, run: _Run, node_id: str) -> None:
        class_type = run.prompt[node_id]["class_type"]
        cached = self._cached(run, node_id)
        if cached is not None:
            if self.hub.client_id is not None:
                self.hub.send("executed", {"node": node_id, "display_node": node_id, "output": cached.ui,
                                           "prompt_id": run.prompt_id}, self.hub.client_id)  # fmt: skip
            if cached.ui is not None:
                run.ui[node_id] = cached.ui
            run.results[node_id] = cached.outputs
            self._progress(run, node_id, "finished")
            return

        inputs = self._input_data(run, node_id)
        self._progress(run, node_id, "running", 0.0, 1.0)
        if self.hub.client_id is not None:
            self.hub.last_node_id = node_id
            self.hub.send("executing", {"node": node_id, "display_node": node_id, "prompt_id": run.prompt_id},
                          self.hub.client_id)  # fmt: skip
        try:
            if self.faults.hang:
                log.warning("hang knob: prompt %s stuck in node %s", run.prompt_id, node_id)
                threading.Event().wait()
            self.interrupt.throw_if_set()
            if node_id == run.fail_node:
                raise OutOfMemoryError(
                    "CUDA out of memory. Tried to allocate 1.50 GiB. GPU 0 has a total capacity of 23.57 GiB of "
                    "which 312.00 MiB is free. Of the allocated memory 21.87 GiB is allocated by PyTorch, and "
                    "1.07 GiB is reserved by PyTorch but unallocated."
                )
            if self.faults.slow_node_seconds and class_type == self.faults.slow_node_class:
                # A long torch op: no progress callback, so an interrupt waits for the next node boundary.
                log.info("slow node knob: %s (node %s) runs %.1f s", class_type, node_id, self.faults.slow_node_seconds)
                time.sleep(self.faults.slow_node_seconds)
            result = RUNNERS[class_type](self._context(run, node_id), **inputs)
        except InterruptProcessingException as ex:
            raise _NodeFailed(node_id, {}, ex) from ex
        except Exception as ex:  # noqa: BLE001 - a node failure is reported to the client, as ComfyUI does
            typ, _, tb = sys.exc_info()
            assert typ is not None
            log.error("!!! Exception during processing !!! %s", ex)
            tips = OOM_TIPS if isinstance(ex, OutOfMemoryError) else ""
            details = {
                "exception_message": f"{ex}\n{tips}",
                "exception_type": full_type_name(typ),
                "traceback": traceback.format_tb(tb),
                "current_inputs": {k: [_format_value(v)] for k, v in inputs.items()},
            }
            raise _NodeFailed(node_id, details, ex) from ex
        self._store(run, node_id, result)

    def _store(self, run: _Run, node_id: str, result: NodeResult) -> None:
        if result.ui:
            run.ui[node_id] = result.ui
            if self.hub.client_id is not None:
                self.hub.send("executed", {"node": node_id, "display_node": node_id, "output": result.ui,
                                           "prompt_id": run.prompt_id}, self.hub.client_id)  # fmt: skip
        run.results[node_id] = result.outputs
        if self.faults.cache:
            self.cache[run.keys[node_id]] = _CacheEntry(result.outputs, result.ui)
        self._progress(run, node_id, "finished")
        run.executed.append(node_id)

    def _input_data(self, run: _Run, node_id: str) -> dict[str, Any]:
        node = run.prompt[node_id]
        spec = NODE_CLASSES[node["class_type"]].input_types(self.models)
        data = {}
        for name, value in node["inputs"].items():
            if input_info(spec, name)[1] not in ("required", "optional"):
                continue
            data[name] = self._output_of(run, value[0])[value[1]] if is_link(value) else value
        return data

    def _output_of(self, run: _Run, node_id: str) -> Any:
        """A linked node's outputs: computed in this run, or served from the cache (never re-run)."""
        if node_id not in run.results:
            cached = self._cached(run, node_id)
            if cached is not None:
                run.results[node_id] = cached.outputs
        return run.results[node_id]

    def _context(self, run: _Run, node_id: str) -> NodeContext:
        def temp_prefix() -> str:
            key = (node_id, run.prompt[node_id]["class_type"])
            if key not in self.temp_prefixes:
                self.temp_prefixes[key] = new_temp_prefix(self.rng)
            return self.temp_prefixes[key]

        return NodeContext(
            node_id=node_id,
            prompt=run.prompt,
            extra_pnginfo=run.extra_data.get("extra_pnginfo"),
            dirs=self.dirs,
            step_seconds=self.faults.step_seconds,
            progress=functools.partial(self._step, run, node_id),
            temp_prefix=temp_prefix,
        )

    def _step(
        self, run: _Run, node_id: str, value: int, total: int, preview: Callable[[], Image.Image] | None = None
    ) -> None:
        """ComfyUI's progress hook: interrupt check, progress_state (+ preview with metadata), `progress`,
        then the legacy binary preview for clients that did not declare supports_preview_metadata."""
        self.interrupt.throw_if_set()
        self._progress(run, node_id, "running", value, total)
        client = self.hub.client_id
        image = preview() if preview is not None and self.faults.preview_method != "none" and client else None
        modern = image is not None and client is not None and self.hub.supports_preview_metadata(client)
        if modern:
            assert image is not None
            meta = json.dumps({"node_id": node_id, "prompt_id": run.prompt_id, "display_node_id": node_id,
                               "parent_node_id": None, "real_node_id": node_id, "image_type": "image/jpeg"}).encode()
            frame = struct.pack(">I", len(meta)) + meta + _jpeg(image)
            self.hub.send(PREVIEW_IMAGE_WITH_METADATA, frame, client)
        if client is not None:
            self.hub.send("progress", {"value": value, "max": total, "prompt_id": run.prompt_id, "node": node_id},
                          client)
        if image is not None and not modern:
            self.hub.send(PREVIEW_IMAGE, struct.pack(">I", 1) + _jpeg(image), client)
        run.steps += 1
        if self.faults.crash_after_steps and run.steps >= self.faults.crash_after_steps:
            log.error("crash knob: crashing after %d sampler steps of prompt %s", run.steps, run.prompt_id)
            self.hub.flush(1.0)
            self.hub.crash()

    def _progress(self, run: _Run, node_id: str, state: str, value: Any = None, total: Any = None) -> None:
        entry = run.progress.setdefault(node_id, {"state": "pending", "value": 0, "max": 1})
        entry["state"] = state
        if state == "finished":
            # A node that never started (served from cache) finishes as integers 1/1, a run one as 1.0/1.0.
            entry["value"] = entry["max"]
        else:
            entry["value"], entry["max"] = value, total
        if self.hub.client_id is None:
            return
        nodes = {
            nid: {"value": e["value"], "max": e["max"], "state": e["state"], "node_id": nid,
                  "prompt_id": run.prompt_id, "display_node_id": nid, "parent_node_id": None, "real_node_id": nid}
            for nid, e in run.progress.items() if e["state"] != "pending"
        }  # fmt: skip
        self.hub.send("progress_state", {"prompt_id": run.prompt_id, "nodes": nodes}, self.hub.client_id)

    def _report_failure(self, run: _Run, failure: _NodeFailed) -> None:
        mes = {
            "prompt_id": run.prompt_id,
            "node_id": failure.node_id,
            "node_type": run.prompt[failure.node_id]["class_type"],
            "executed": list(run.executed),
        }
        if isinstance(failure.ex, InterruptProcessingException):
            log.info("Processing interrupted")
            self.add_message("execution_interrupted", mes, broadcast=True)
            return
        self.add_message(
            "execution_error",
            {**mes, **{k: failure.details[k] for k in ("exception_message", "exception_type", "traceback",
                                                      "current_inputs")},
             "current_outputs": list(run.prompt)},
            broadcast=False,
        )  # fmt: skip

    def _history_result(self, run: _Run) -> dict[str, Any]:
        outputs, meta = {}, {}
        for node_id in run.prompt:
            ui = run.ui.get(node_id)
            if ui is None:
                entry = self._cached(run, node_id)
                ui = entry.ui if entry else None
            if ui:
                outputs[node_id] = ui
                meta[node_id] = {"node_id": node_id, "display_node": node_id, "parent_node": None,
                                 "real_node_id": node_id}  # fmt: skip
        return {"outputs": outputs, "meta": meta}


def prompt_worker(queue: PromptQueue, executor: PromptExecutor, hub: Hub) -> None:
    """ComfyUI's prompt_worker thread: take the lowest number, execute, write history, send `executing` null."""
    while True:
        got = queue.get(timeout=1000.0)
        if got is not None:
            item, item_id = got
            started = time.perf_counter()
            number, prompt_id, prompt, extra_data, outputs, sensitive = item
            hub.last_prompt_id = prompt_id
            try:
                executor.execute(prompt, prompt_id, {**extra_data, **sensitive}, outputs)
            except PodCrashed:
                return  # the pod is gone: no history, no final frames, no next prompt
            except Exception:  # noqa: BLE001 - a simulator bug must not kill the only worker thread
                log.exception("simulator error while executing prompt %s", prompt_id)
                executor.success = False
                executor.history_result = {"outputs": {}, "meta": {}}
            status = {
                "status_str": "success" if executor.success else "error",
                "completed": executor.success,
                "messages": executor.status_messages,
            }
            queue.task_done(item_id, executor.history_result, status)
            if hub.client_id is not None:
                hub.send("executing", {"node": None, "prompt_id": prompt_id}, hub.client_id)
            log.info("Prompt executed in %.2f seconds", time.perf_counter() - started)
        flags = queue.take_flags()
        if flags.get("free_memory"):
            executor.reset()
