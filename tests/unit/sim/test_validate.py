"""Validation errors: every captured 400 body reproduced exactly (tracebacks aside), plus the README's rows."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from comfyfleet.sim.catalog import Models
from comfyfleet.sim.paths import DataDirs
from comfyfleet.sim.validate import validate_prompt
from tests.unit.sim.recorded import capture

INVALID = capture("post_prompt_invalid.json")
BASIC = capture("post_prompt_basic_request.json")["prompt"]


def _strip_tracebacks(obj: Any) -> Any:
    """Tracebacks name the server's own files; keep only that they are lists of strings."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k == "traceback":
                assert isinstance(v, list) and all(isinstance(line, str) for line in v) and v
                out[k] = "<traceback>"
            else:
                out[k] = _strip_tracebacks(v)
        return out
    if isinstance(obj, list):
        return [_strip_tracebacks(v) for v in obj]
    return obj


CASES = [name for name, case in INVALID.items() if "request" in case and "prompt" in case["request"]]


@pytest.mark.parametrize("case", CASES)
def test_captured_400_bodies_are_reproduced(case: str, models: Models, dirs: DataDirs) -> None:
    request = copy.deepcopy(INVALID[case]["request"])
    result = validate_prompt(request["prompt"], models, dirs)
    assert not result.ok
    body = {"error": result.error, "node_errors": result.node_errors}
    assert _strip_tracebacks(body) == _strip_tracebacks(INVALID[case]["response"]["body"])


def _bad(node: str, **inputs: Any) -> dict[str, Any]:
    prompt = copy.deepcopy(BASIC)
    prompt[node]["inputs"].update(inputs)
    return prompt


def _only_error(result: Any) -> dict[str, Any]:
    assert not result.ok and result.error["type"] == "prompt_outputs_failed_validation"
    [(node_id, entry)] = result.node_errors.items()
    [error] = entry["errors"]
    return {"node": node_id, **error}


def test_value_bigger_than_max(models: Models, dirs: DataDirs) -> None:
    error = _only_error(validate_prompt(_bad("1", height=20000), models, dirs))
    assert error["type"] == "value_bigger_than_max"
    assert error["message"] == "Value 20000 bigger than max of 16384"
    assert error["details"] == "height"
    assert error["extra_info"]["received_value"] == 20000


def _checkpoint_prompt(ckpt: str, lora: str = "detail_tweaker_xl.safetensors") -> dict[str, Any]:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": lora,
                                                     "strength_model": 1.0, "strength_clip": 1.0}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "x", "clip": ["2", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["2", 0], "seed": 1, "steps": 2, "cfg": 7, "sampler_name": "euler", "scheduler": "normal",
            "positive": ["3", 0], "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "x"}},
    }  # fmt: skip


def test_unknown_checkpoint_is_value_not_in_list(models: Models, dirs: DataDirs) -> None:
    error = _only_error(validate_prompt(_checkpoint_prompt("nope.safetensors"), models, dirs))
    assert error["node"] == "1"
    assert error["type"] == "value_not_in_list"
    assert error["message"] == "Value not in list"
    assert error["details"] == (
        "ckpt_name: 'nope.safetensors' not in ['sd_xl_base_1.0.safetensors', 'v1-5.safetensors']"
    )
    assert error["extra_info"]["input_config"][0] == models.checkpoints


def test_unknown_lora_is_value_not_in_list(models: Models, dirs: DataDirs) -> None:
    error = _only_error(validate_prompt(_checkpoint_prompt("v1-5.safetensors", "gone.safetensors"), models, dirs))
    assert (error["node"], error["type"]) == ("2", "value_not_in_list")


def test_long_option_lists_are_not_echoed(dirs: DataDirs) -> None:
    many = Models([f"m{i}.safetensors" for i in range(30)], ["detail_tweaker_xl.safetensors"], dirs.input)
    error = _only_error(validate_prompt(_checkpoint_prompt("nope"), many, dirs))
    assert error["details"] == "ckpt_name: 'nope' not in (list of length 30)"
    assert error["extra_info"]["input_config"] is None


def test_valid_prompt_converts_values_in_place(models: Models, dirs: DataDirs) -> None:
    prompt = _checkpoint_prompt("v1-5.safetensors")
    result = validate_prompt(prompt, models, dirs)
    assert result.ok and result.outputs == ["7"] and result.node_errors == {}
    assert prompt["5"]["inputs"]["cfg"] == 7.0 and isinstance(prompt["5"]["inputs"]["cfg"], float)
    assert isinstance(prompt["5"]["inputs"]["denoise"], float)


def test_return_type_mismatch(models: Models, dirs: DataDirs) -> None:
    prompt = _bad("3", images=["1", 0])
    prompt["1"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    prompt["2"]["inputs"]["image"] = ["1", 0]
    result = validate_prompt(prompt, models, dirs)
    types = {e["type"] for entry in result.node_errors.values() for e in entry["errors"]}
    assert types == {"return_type_mismatch"}


def test_partial_node_errors_with_a_good_output_still_pass(models: Models, dirs: DataDirs) -> None:
    prompt = copy.deepcopy(BASIC)
    prompt["4"] = {"class_type": "ImageInvert", "inputs": {}}
    prompt["5"] = {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}}
    result = validate_prompt(prompt, models, dirs)
    assert result.ok and result.error is None
    assert result.outputs == ["3"]
    assert result.node_errors == {
        "4": {
            "errors": [{"type": "required_input_missing", "message": "Required input is missing",
                        "details": "image", "extra_info": {"input_name": "image"}}],
            "dependent_outputs": ["5"],
            "class_type": "ImageInvert",
        }
    }  # fmt: skip


def test_loadimage_accepts_subfolder_and_annotated_names(models: Models, dirs: DataDirs) -> None:
    (dirs.input / "sub").mkdir()
    (dirs.input / "sub" / "a.png").write_bytes(b"x")
    (dirs.output / "o.png").write_bytes(b"x")
    for name in ("sub/a.png", "o.png [output]"):
        prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": name}},
                  "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}  # fmt: skip
        assert validate_prompt(prompt, models, dirs).ok, name


def test_partial_execution_targets_limit_outputs(models: Models, dirs: DataDirs) -> None:
    prompt = copy.deepcopy(BASIC)
    prompt["5"] = {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}
    assert validate_prompt(copy.deepcopy(prompt), models, dirs, ["5"]).outputs == ["5"]
    assert validate_prompt(copy.deepcopy(prompt), models, dirs, ["2"]).error["type"] == "prompt_no_outputs"
