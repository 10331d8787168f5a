"""Check a workflow against a ComfyUI node catalog (the /object_info of a ready pod) before queueing it.

This catches the common mistakes (unknown node, missing input, bad link, value out of range, unknown model)
with a 422 at the front door; the pod's own validation still has the last word at dispatch.
"""

from __future__ import annotations

from typing import Any

from comfyfleet.comfy.models import combo_input, literal_value  # the one reader of ComfyUI's catalog forms
from comfyfleet.jobs.model import Workflow
from comfyfleet.jobs.workflow import NodeIssue, check_shape, is_link

_SCALARS: dict[str, type | tuple[type, ...]] = {"INT": int, "FLOAT": (int, float), "STRING": str, "BOOLEAN": bool}


def validate_workflow(workflow: Workflow, catalog: dict[str, Any] | None,
                      input_images: frozenset[str] = frozenset()) -> list[NodeIssue]:
    """All issues found; an empty list means the workflow looks runnable on a pod with this catalog.

    input_images are names the job uploads itself, so LoadImage may name them although no pod has them yet.
    """
    issues = check_shape(workflow)
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
        issues.extend(_check_inputs(workflow, node_id, cls, inputs, info, catalog, skip=skip))
    if not has_output and not issues:
        issues.append(NodeIssue("", "the workflow has no output node (e.g. SaveImage)", type="prompt_no_outputs"))
    return issues


def _check_inputs(workflow: Workflow, node_id: str, cls: str, inputs: dict[str, Any], info: dict[str, Any],
                  catalog: dict[str, Any], skip: set[str]) -> list[NodeIssue]:
    issues: list[NodeIssue] = []
    spec = info.get("input", {})
    for name in spec.get("required") or {}:
        if name not in inputs:
            issues.append(NodeIssue(node_id, "required input is missing", cls, name, type="required_input_missing"))
    declared = {**(spec.get("required") or {}), **(spec.get("optional") or {})}
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
        issues.extend(_check_value(node_id, cls, name, literal_value(value), input_spec))
    return issues


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
