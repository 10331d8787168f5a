"""Prompt validation with ComfyUI's error types, messages and node_errors shapes.

A close port of `validate_prompt` / `validate_inputs` in ComfyUI's execution.py, including its quirks:
conversions write back into the prompt (so the queued prompt holds `int`/`float` values), a link to a
missing node is blamed on the linking node's parent input, and an exception inside an output node's own
check becomes `exception_during_validation`.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from comfyfleet.sim.catalog import NODE_CLASSES, Models, NodeClass
from comfyfleet.sim.paths import DataDirs, input_file_path

Error = dict[str, Any]


@dataclass(frozen=True)
class Validation:
    """Result of validate_prompt: ok, the top-level error, outputs to run, per-node errors."""

    ok: bool
    error: Error | None
    outputs: list[str]
    node_errors: dict[str, Any]


def full_type_name(klass: type) -> str:
    """`KeyError` for builtins, `PIL.UnidentifiedImageError` otherwise (module + qualname)."""
    module = klass.__module__
    return klass.__qualname__ if module == "builtins" else f"{module}.{klass.__qualname__}"


def input_info(spec: dict[str, Any], name: str) -> tuple[Any, str | None, dict[str, Any] | None]:
    """(type, category, extra options) of one input, as ComfyUI's get_input_info."""
    for category in ("required", "optional", "hidden"):
        if name in spec.get(category, {}):
            entry = spec[category][name]
            if isinstance(entry, str):  # hidden inputs are plain strings
                return entry, category, {}
            return entry[0], category, (entry[1] if len(entry) > 1 else {})
    return None, None, None


def types_match(received: Any, expected: Any) -> bool:
    """ComfyUI's validate_node_input (non-strict): equal, `*`, or overlapping comma lists."""
    if not received != expected:
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    got = {t.strip() for t in received.split(",")}
    want = {t.strip() for t in expected.split(",")}
    return "*" in got or "*" in want or bool(got & want)


def _load_image_check(dirs: DataDirs) -> Callable[..., bool | str]:
    def validate(image: str) -> bool | str:
        if not input_file_path(image, dirs).exists():
            return f"Invalid image file: {image}"
        return True

    # A missing `image` then raises "LoadImage.VALIDATE_INPUTS() missing 1 required positional argument".
    validate.__qualname__ = "LoadImage.VALIDATE_INPUTS"
    return validate


class _Validator:
    def __init__(self, prompt: dict[str, Any], models: Models, dirs: DataDirs):
        self.prompt = prompt
        self.models = models
        self.custom = {"LoadImage": _load_image_check(dirs)}
        self.validated: dict[str, tuple[bool, list[Error], str]] = {}

    def inputs(self, unique_id: str) -> tuple[bool, list[Error], str]:
        if unique_id in self.validated:
            return self.validated[unique_id]
        inputs = self.prompt[unique_id]["inputs"]
        node: NodeClass = NODE_CLASSES[self.prompt[unique_id]["class_type"]]
        spec = node.input_types(self.models)
        names = list(spec.get("required", {})) + [n for n in spec.get("optional", {}) if n not in spec["required"]]
        errors: list[Error] = []
        valid = True
        checked = node.validate_inputs

        for x in names:
            input_type, category, extra = input_info(spec, x)
            assert extra is not None
            if x not in inputs:
                if category == "required":
                    errors.append(_err("required_input_missing", "Required input is missing", x, {"input_name": x}))
                continue
            val = inputs[x]
            info = [input_type, extra]
            if isinstance(val, list):
                if len(val) != 2:
                    errors.append(_err(
                        "bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]", x,
                        {"input_name": x, "input_config": info, "received_value": val},
                    ))  # fmt: skip
                    continue
                o_id = val[0]
                o_class_type = self.prompt[o_id]["class_type"]
                received_type = NODE_CLASSES[o_class_type].return_types[val[1]]
                if not types_match(received_type, input_type):
                    errors.append(_err(
                        "return_type_mismatch", "Return type mismatch between linked nodes",
                        f"{x}, received_type({received_type}) mismatch input_type({input_type})",
                        {"input_name": x, "input_config": info, "received_type": received_type, "linked_node": val},
                    ))  # fmt: skip
                    continue
                try:
                    if self.inputs(o_id)[0] is False:
                        valid = False
                        continue
                except Exception as ex:  # noqa: BLE001 - reported to the client, as ComfyUI does
                    valid = False
                    typ, _, tb = sys.exc_info()
                    assert typ is not None
                    self.validated[o_id] = (False, [_err(
                        "exception_during_inner_validation", "Exception when validating inner node", str(ex),
                        {"input_name": x, "input_config": info, "exception_message": str(ex),
                         "exception_type": full_type_name(typ), "traceback": traceback.format_tb(tb),
                         "linked_node": val},
                    )], o_id)  # fmt: skip
                    continue
            else:
                try:
                    if isinstance(val, dict) and "__value__" in val:
                        val = inputs[x] = val["__value__"]
                    converter = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}.get(
                        input_type if isinstance(input_type, str) else ""
                    )
                    if converter is not None:
                        val = inputs[x] = converter(val)
                except Exception as ex:  # noqa: BLE001 - reported to the client, as ComfyUI does
                    errors.append(_err(
                        "invalid_input_type", f"Failed to convert an input value to a {input_type} value",
                        f"{x}, {val}, {ex}",
                        {"input_name": x, "input_config": info, "received_value": val, "exception_message": str(ex)},
                    ))  # fmt: skip
                    continue
                if x not in checked:
                    error = _range_or_choice_error(x, val, input_type, extra, info)
                    if error is not None:
                        errors.append(error)
                        continue

        if checked:
            errors.extend(self._custom_checks(node, inputs, spec, checked))
        result = (False, errors, unique_id) if errors or valid is not True else (True, [], unique_id)
        self.validated[unique_id] = result
        return result

    def _custom_checks(
        self, node: NodeClass, inputs: dict[str, Any], spec: dict[str, Any], checked: tuple[str, ...]
    ) -> list[Error]:
        """Run the node's VALIDATE_INPUTS; links are not resolved yet, so they arrive as None."""
        filtered = {}
        for x, value in inputs.items():
            if input_info(spec, x)[1] is None or x not in checked:
                continue
            filtered[x] = None if isinstance(value, list) else value
        result = self.custom[node.name](**filtered)
        if result is True:
            return []
        return [
            _err("custom_validation_failed", "Custom validation failed for node",
                 x if result is False else f"{x} - {result}", {"input_name": x})
            for x in filtered
        ]  # fmt: skip


def _range_or_choice_error(
    x: str, val: Any, input_type: Any, extra: dict[str, Any], info: list[Any]
) -> Error | None:
    if "min" in extra and val < extra["min"]:
        return _err("value_smaller_than_min", f"Value {val} smaller than min of {extra['min']}", x,
                    {"input_name": x, "input_config": info, "received_value": val})  # fmt: skip
    if "max" in extra and val > extra["max"]:
        return _err("value_bigger_than_max", f"Value {val} bigger than max of {extra['max']}", x,
                    {"input_name": x, "input_config": info, "received_value": val})  # fmt: skip
    if isinstance(input_type, list) and val not in input_type:
        # ComfyUI does not echo long option lists (model folders can hold thousands of files).
        if len(input_type) > 20:
            list_info, config = f"(list of length {len(input_type)})", None
        else:
            list_info, config = str(input_type), info
        return _err("value_not_in_list", "Value not in list", f"{x}: '{val}' not in {list_info}",
                    {"input_name": x, "input_config": config, "received_value": val})  # fmt: skip
    return None


def _err(kind: str, message: str, details: str, extra_info: dict[str, Any]) -> Error:
    return {"type": kind, "message": message, "details": details, "extra_info": extra_info}


def _top(kind: str, message: str, details: str = "") -> Error:
    return {"type": kind, "message": message, "details": details, "extra_info": {}}


def validate_prompt(
    prompt: Any, models: Models, dirs: DataDirs, partial_targets: list[str] | None = None
) -> Validation:
    """Validate an API-format prompt the way ComfyUI's POST /prompt does (may mutate `prompt`)."""
    outputs: list[str] = []
    for x in prompt:
        if "class_type" not in prompt[x]:
            msg = "Cannot execute because a node is missing the class_type property."
            return Validation(False, _top("invalid_prompt", msg, f"Node ID '#{x}'"), [], {})
        class_type = prompt[x]["class_type"]
        node = NODE_CLASSES.get(class_type)
        if node is None:
            msg = f"Cannot execute because node {class_type} does not exist."
            return Validation(False, _top("invalid_prompt", msg, f"Node ID '#{x}'"), [], {})
        if node.output_node and (partial_targets is None or x in partial_targets):
            outputs.append(x)
    if not outputs:
        return Validation(False, _top("prompt_no_outputs", "Prompt has no outputs"), [], {})

    v = _Validator(prompt, models, dirs)
    good: list[str] = []
    failed: list[tuple[str, list[Error]]] = []
    node_errors: dict[str, Any] = {}
    for o in outputs:
        try:
            ok, reasons, _ = v.inputs(o)
        except Exception as ex:  # noqa: BLE001 - reported to the client, as ComfyUI does
            typ, _, tb = sys.exc_info()
            assert typ is not None
            ok = False
            reasons = [_err("exception_during_validation", "Exception when validating node", str(ex),
                            {"exception_type": full_type_name(typ), "traceback": traceback.format_tb(tb)})]  # fmt: skip
            v.validated[o] = (False, reasons, o)
        if ok is True:
            good.append(o)
            continue
        failed.append((o, reasons))
        # ComfyUI appends this output to every failing node validated so far, related or not.
        for node_id, (node_ok, node_reasons, _) in v.validated.items():
            if node_ok is not True and node_reasons:
                class_type = prompt[node_id]["class_type"]
                entry = node_errors.setdefault(
                    node_id, {"errors": node_reasons, "dependent_outputs": [], "class_type": class_type}
                )
                entry["dependent_outputs"].append(o)

    if not good:
        details = "\n".join(f"{e['message']}: {e['details']}" for _, errs in failed for e in errs)
        return Validation(False, _top("prompt_outputs_failed_validation", "Prompt outputs failed validation", details),
                          [], node_errors)  # fmt: skip
    return Validation(True, None, good, node_errors)
