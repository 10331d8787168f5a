"""Check a workflow against a ComfyUI node catalog (the /object_info of a ready pod) before queueing it.

This catches the common mistakes (unknown node, missing input, bad link, value out of range, unknown model)
with a 422 at the front door; the pod's own validation still has the last word at dispatch.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

from comfyfleet.comfy.models import (  # the one reader of ComfyUI's catalog forms
    combo_input,
    combo_options,
    literal_value,
)
from comfyfleet.jobs.model import Workflow
from comfyfleet.jobs.workflow import NodeIssue, Slot, check_shape, is_link

_SCALARS: dict[str, type | tuple[type, ...]] = {"INT": int, "FLOAT": (int, float), "STRING": str, "BOOLEAN": bool}


def validate_workflow(workflow: Workflow, catalog: dict[str, Any] | None,
                      input_images: frozenset[str] = frozenset(), *, strict_files: bool = True) -> list[NodeIssue]:
    """All issues found; an empty list means the workflow looks runnable on a pod with this catalog.

    input_images are names the job uploads itself, so LoadImage may name them although no pod has them yet.
    With strict_files=False a file-like COMBO value (a model, an image) missing from the catalog is not an
    issue: catalogs are snapshots (a file copied onto a pod appears in them only at the next refresh) and
    ComfyUI accepts `subfolder/name` values it never lists; the dispatcher and the pod have the last word.
    """
    issues = check_shape(workflow) + check_meta(workflow)
    if issues or not catalog:
        return issues
    has_output = False
    for node_id, node in workflow.items():
        cls = node["class_type"]
        info = catalog.get(cls)
        if info is None:
            issues.append(NodeIssue(node_id, f"node type {cls} does not exist on the workers", cls,
                                    type="invalid_prompt"))
            continue
        has_output = has_output or bool(info.get("output_node"))
        inputs = node.get("inputs", {})
        uploaded = cls == "LoadImage" and inputs.get("image") in input_images
        skip = {"image"} if uploaded else set()
        issues.extend(_check_inputs(workflow, node_id, cls, inputs, info, catalog, skip=skip,
                                    strict_files=strict_files))
    if not has_output and not issues:
        issues.append(NodeIssue("", "the workflow has no output node (e.g. SaveImage)", type="prompt_no_outputs"))
    return issues


def _check_inputs(workflow: Workflow, node_id: str, cls: str, inputs: dict[str, Any], info: dict[str, Any],
                  catalog: dict[str, Any], skip: set[str], strict_files: bool = True) -> list[NodeIssue]:
    issues: list[NodeIssue] = []
    for name in info.get("input", {}).get("required") or {}:
        if name not in inputs:
            issues.append(NodeIssue(node_id, "required input is missing", cls, name, type="required_input_missing"))
    declared = _declared_inputs(info)
    for name, value in inputs.items():
        if name not in declared or name in skip:
            continue  # ComfyUI ignores unknown inputs; skipped ones are checked by the pod
        input_spec = declared[name]
        if is_link(value):
            source = workflow[value[0]].get("class_type")
            outputs = (catalog.get(source) or {}).get("output", [])
            if value[1] >= len(outputs) and source in catalog:
                issues.append(NodeIssue(node_id, f"links to output {value[1]} of node {value[0]}, which has "
                                        f"{len(outputs)} outputs", cls, name, type="bad_link"))
            continue
        issues.extend(_check_literal(node_id, cls, name, value, input_spec, strict_files))
    return issues


def _declared_inputs(info: dict[str, Any]) -> dict[str, Any]:
    """A node type's inputs by name, required and optional, with their specs."""
    spec = info.get("input", {})
    return {**(spec.get("required") or {}), **(spec.get("optional") or {})}


def _check_literal(node_id: str, cls: str, name: str, value: Any, input_spec: Any,
                   strict_files: bool) -> list[NodeIssue]:
    value = literal_value(value)
    if not strict_files and names_a_file(value) and is_file_like(combo_options(input_spec), value):
        return []
    return _check_value(node_id, cls, name, value, input_spec)


@dataclass(frozen=True)
class _Plan:
    """What varies in one template's graph with one set of parameter names: (node, class, input, input spec)
    of every slot a parameter was written to; the rest of the graph passed validate_workflow."""

    slots: tuple[tuple[str, str, str, Any], ...]

    def accepts(self, workflow: Workflow) -> bool:
        for node_id, cls, name, spec in self.slots:
            value = workflow[node_id]["inputs"][name]
            if spec is not None and (is_link(value) or _check_literal(node_id, cls, name, value, spec, False)):
                return False
        return True


class TemplateChecks:
    """validate_workflow(strict_files=False) for templated graphs at a fraction of its cost (issue 14: it was a
    fifth of the API's CPU per request, most of it lookups in a catalog too large to stay in the CPU's caches).

    A template rendered with a given set of parameter names has one shape whatever the values (apply_params's
    `written` lists where the values went). The first request of a (pool, template, names) validates its whole
    graph; if no issue lies outside those slots, the later ones check only the values in the slots against
    their input specs. A graph the plan does not accept, and every graph of a shape with an issue elsewhere,
    goes through validate_workflow, so the issues reported are always its own. Plans belong to one catalog
    object: a catalog reloaded (a new object) starts them again.
    """

    MAX_PLANS = 1024  # shapes are few (templates x parameter-name sets); bounded all the same

    def __init__(self) -> None:
        self._catalogs: dict[str | None, dict[str, Any]] = {}
        self._plans: dict[tuple[str | None, str, tuple[str, ...]], _Plan | None] = {}

    def validate(self, pool: str | None, template: str, names: tuple[str, ...], workflow: Workflow,
                 written: list[Slot], catalog: dict[str, Any] | None) -> list[NodeIssue]:
        if not catalog:
            return validate_workflow(workflow, catalog, strict_files=False)
        if self._catalogs.get(pool) is not catalog:
            self._catalogs[pool] = catalog
            self._plans = {k: v for k, v in self._plans.items() if k[0] != pool}
        key = (pool, template, names)
        if key not in self._plans:
            issues = validate_workflow(workflow, catalog, strict_files=False)
            if len(self._plans) >= self.MAX_PLANS:
                self._plans.clear()
            self._plans[key] = _plan(workflow, written, catalog, issues)
            return issues
        plan = self._plans[key]
        if plan is not None and plan.accepts(workflow):
            return []
        return validate_workflow(workflow, catalog, strict_files=False)


def _plan(workflow: Workflow, written: list[Slot], catalog: dict[str, Any],
          issues: list[NodeIssue]) -> _Plan | None:
    """The plan of a rendered graph and its validation; None when an issue lies outside the slots."""
    slots = set(written)
    if any((i.node_id, i.input_name) not in slots for i in issues):
        return None
    planned = []
    for node_id, name in dict.fromkeys(written):  # each slot once, in the order written
        cls = workflow[node_id]["class_type"]
        spec = _declared_inputs(catalog.get(cls) or {}).get(name)
        planned.append((node_id, cls, name, spec))  # None: an input ComfyUI ignores
    return _Plan(tuple(planned))


_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".sft", ".onnx", ".png", ".jpg",
                  ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".mp4", ".webm", ".wav", ".mp3", ".flac",
                  ".json", ".yaml", ".txt", ".csv")


def names_a_file(value: Any) -> bool:
    """A text with a file suffix (a model, an image): the cheap half of is_file_like, checked first."""
    return isinstance(value, str) and value.lower().endswith(_FILE_SUFFIXES)


def is_file_like(options: list[Any] | None, value: Any) -> bool:
    """A COMBO that lists files (models, images): its value names a file, possibly in a subfolder."""
    if options is None or not names_a_file(value):
        return False  # the value first: most values (sampler names, modes) end the check before the options
    named = [o for o in options if isinstance(o, str)]
    files = [o for o in named if o.lower().endswith(_FILE_SUFFIXES)]
    return not named or 2 * len(files) >= len(named)


def merge_catalogs(catalogs: list[dict[str, Any]]) -> dict[str, Any]:
    """One catalog for several pods: every node type any pod has, COMBO options united across pods.

    A job without a pool may run on any pod, so a LoRA that only one pod lists is still a valid choice.
    """
    merged: dict[str, Any] = {}
    for catalog in catalogs:
        for cls, info in catalog.items():
            if cls not in merged:
                merged[cls] = copy.deepcopy(info)
                continue
            _merge_combos(merged[cls], info)
    return merged


def _merge_combos(into: dict[str, Any], other: dict[str, Any]) -> None:
    for section in ("required", "optional"):
        inputs = into.setdefault("input", {})
        if not isinstance(inputs.get(section), dict):
            inputs[section] = {}
        mine = inputs[section]
        theirs = (other.get("input") or {}).get(section) or {}
        for name, spec in theirs.items():
            if name not in mine:
                mine[name] = copy.deepcopy(spec)
                continue
            extra = combo_options(spec)
            have = combo_options(mine[name])
            if extra is None or have is None:
                continue
            union = have + [o for o in extra if o not in have]
            if isinstance(mine[name][0], list):
                mine[name] = [union, *mine[name][1:]]
            else:
                mine[name] = ["COMBO", {**mine[name][1], "options": union}, *mine[name][2:]]


def _check_value(node_id: str, cls: str, name: str, value: Any, input_spec: Any) -> list[NodeIssue]:
    combo = combo_input(input_spec)
    if combo is not None:
        options = combo.options
        if combo.rejected(value):
            shown = ", ".join(map(str, options[:10])) + (" …" if len(options) > 10 else "")
            return [NodeIssue(node_id, f"value {value!r} not in list [{shown}]", cls, name, type="value_not_in_list")]
        return []
    if not (isinstance(input_spec, list) and input_spec and isinstance(input_spec[0], str)):
        return []
    kind = input_spec[0]
    opts = input_spec[1] if len(input_spec) > 1 and isinstance(input_spec[1], dict) else {}
    expected = _SCALARS.get(kind)
    if expected is None:
        return [NodeIssue(node_id, f"expects a link to a {kind} output, got a literal", cls, name,
                          type="invalid_input_type")] if kind.isupper() and kind not in _SCALARS else []
    if isinstance(value, bool) and kind in {"INT", "FLOAT"} or not isinstance(value, expected):
        return [NodeIssue(node_id, f"expects a {kind} value, got {value!r}", cls, name, type="invalid_input_type")]
    if kind in {"INT", "FLOAT"}:
        if "min" in opts and value < opts["min"]:
            return [NodeIssue(node_id, f"value {value} smaller than min of {opts['min']}", cls, name,
                              type="value_smaller_than_min")]
        if "max" in opts and value > opts["max"]:
            return [NodeIssue(node_id, f"value {value} bigger than max of {opts['max']}", cls, name,
                              type="value_bigger_than_max")]
    return []


# The API's defaults (ApiSettings.max_workflow_*); the operator applies the same to GenerationJobs.
DEFAULT_BOUNDS = {"max_depth": 32, "max_nodes": 2_000, "max_bytes": 2 * 1024 * 1024}


class WorkflowRefused(ValueError):
    """The graph cannot be accepted as it is; `field` names where (e.g. `workflow.5.inputs.text`), `code` is the
    API error's code."""

    code = "invalid_workflow"

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class WorkflowTooLarge(WorkflowRefused):
    """The graph breaks a size bound."""

    code = "workflow_too_large"


# The integers a job record and ComfyUI's INT inputs carry: signed and unsigned 64-bit (a seed goes up to 2**64-1).
INT_RANGE = (-(2**63), 2**64 - 1)


def check_bounds(workflow: Any, *, max_depth: int, max_nodes: int, max_bytes: int) -> None:
    """Refuse graphs too deep, too many nodes or too big to store and read back (raises WorkflowTooLarge), and
    numbers JSON and a job record cannot carry: NaN and infinities (json.loads reads them; they are not JSON)
    and integers beyond 64 bits (raises WorkflowRefused).

    Iterative, so a value nested thousands of levels deep cannot exhaust the stack while being checked.
    Depth counts the workflow object as level 1, a node as 2, its inputs as 3.
    """
    if isinstance(workflow, dict) and len(workflow) > max_nodes:
        raise WorkflowTooLarge("workflow", f"has {len(workflow)} nodes; at most {max_nodes} are accepted")
    stack: list[tuple[Any, str, int]] = [(workflow, "workflow", 1)]
    size = 0
    while stack:
        value, path, depth = stack.pop()
        if depth > max_depth:
            raise WorkflowTooLarge(path, f"nested deeper than {max_depth} levels")
        if isinstance(value, dict):
            size += 2 + sum(len(str(k)) + 4 for k in value)
            stack.extend((v, f"{path}.{k}", depth + 1) for k, v in value.items())
        elif isinstance(value, list):
            size += 2 + len(value)
            stack.extend((v, f"{path}.{i}", depth + 1) for i, v in enumerate(value))
        elif isinstance(value, str):
            size += len(value) + 2
        else:
            size += 8
            if isinstance(value, float) and not math.isfinite(value):
                raise WorkflowRefused(path, f"{value} is not a JSON number")
            if isinstance(value, int) and not INT_RANGE[0] <= value <= INT_RANGE[1]:
                raise WorkflowRefused(path, "integers beyond 64 bits are not accepted")
        if size > max_bytes:
            raise WorkflowTooLarge("workflow", f"is larger than {max_bytes} bytes")


_META_SCALARS: tuple[type, ...] = (str, int, float, bool, type(None))


def check_meta(workflow: Workflow) -> list[NodeIssue]:
    """`_meta` is UI metadata ({"title": ...}): a flat object of short scalars, never a place to hide data."""
    issues: list[NodeIssue] = []
    for node_id, node in workflow.items():
        if not isinstance(node, dict) or "_meta" not in node:
            continue
        meta, cls = node["_meta"], node.get("class_type") if isinstance(node.get("class_type"), str) else None
        if not isinstance(meta, dict):
            issues.append(NodeIssue(node_id, "_meta must be an object", cls, "_meta", type="invalid_meta"))
            continue
        for key, value in meta.items():
            if not isinstance(value, _META_SCALARS) or (isinstance(value, str) and len(value) > 1024):
                issues.append(NodeIssue(node_id, f"_meta.{key} must be a scalar (strings up to 1024 characters)",
                                        cls, f"_meta.{key}", type="invalid_meta"))
    return issues
