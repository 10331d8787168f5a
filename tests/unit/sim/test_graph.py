"""Execution order and cache keys."""

from __future__ import annotations

import copy

import pytest

from comfyfleet.sim.graph import DependencyCycleError, ExecutionList, cache_keys, execution_order
from tests.unit.sim.recorded import capture

BASIC = capture("post_prompt_basic_request.json")["prompt"]

# The captured runtime-error prompt (ImageBatch swapped for ImageScale, which the simulator knows):
# ComfyUI ran node "2" before node "1" although "1" comes first.
ERROR_RUN = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 1}},
    "2": {"class_type": "LoadImage", "inputs": {"image": "corrupt.png"}},
    "3": {"class_type": "ImageBlur", "inputs": {"image": ["2", 0], "blur_radius": 1, "sigma": 1.0}},
    "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    "5": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
}


def _never_cached(node_id: str) -> bool:
    return False


def test_basic_chain_runs_in_dependency_order() -> None:
    assert execution_order(BASIC, ["3"], _never_cached) == ["1", "2", "3"]


def test_order_follows_dependencies_not_ids() -> None:
    prompt = {
        "9": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "1": {"class_type": "ImageInvert", "inputs": {"image": ["9", 0]}},
        "0": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }
    assert execution_order(prompt, ["0"], _never_cached) == ["9", "1", "0"]


def test_output_nodes_run_as_soon_as_they_can() -> None:
    # Output "5" becomes available right after "1"; ComfyUI prefers an available output node.
    order = execution_order(ERROR_RUN, ["4", "5"], _never_cached)
    assert order.index("5") == order.index("1") + 1
    assert order.index("2") < order.index("3") < order.index("4")


def test_node_two_steps_from_an_output_goes_first() -> None:
    prompt = copy.deepcopy(ERROR_RUN)
    prompt["3"] = {"class_type": "ImageScale", "inputs": {
        "image": ["1", 0], "upscale_method": "area", "width": 8, "height": 8, "crop": "disabled"}}
    prompt["4"]["inputs"]["images"] = ["3", 0]
    prompt["6"] = {"class_type": "ImageBlur", "inputs": {"image": ["2", 0], "blur_radius": 1, "sigma": 1.0}}
    prompt["7"] = {"class_type": "ImageInvert", "inputs": {"image": ["6", 0]}}
    prompt["8"] = {"class_type": "PreviewImage", "inputs": {"images": ["7", 0]}}
    del prompt["5"]
    # "1" feeds "3" which feeds output "4": picked before "2", which is three steps away.
    assert execution_order(prompt, ["4", "8"], _never_cached)[0] == "1"  # fmt: skip


def test_cached_inputs_are_not_scheduled() -> None:
    assert execution_order(BASIC, ["3"], lambda n: n in {"1", "2"}) == ["3"]
    assert execution_order(BASIC, ["3"], lambda n: n == "1") == ["2", "3"]


def test_cycle_is_reported() -> None:
    prompt = {
        "1": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    plan = ExecutionList(prompt, _never_cached)
    plan.add_node("3")
    with pytest.raises(DependencyCycleError):
        plan.next_node()


def _keys(prompt: dict, changed: dict | None = None) -> dict:
    return cache_keys(prompt, lambda n: (changed or {}).get(n, False))


def test_identical_prompts_have_identical_keys() -> None:
    assert _keys(BASIC) == _keys(copy.deepcopy(BASIC))


def test_changing_an_input_changes_that_node_and_everything_downstream() -> None:
    other = copy.deepcopy(BASIC)
    other["1"]["inputs"]["color"] = 1
    a, b = _keys(BASIC), _keys(other)
    assert all(a[n] != b[n] for n in ("1", "2", "3"))


def test_changing_only_the_output_keeps_upstream_keys() -> None:
    other = copy.deepcopy(BASIC)
    other["3"]["inputs"]["filename_prefix"] = "elsewhere"
    a, b = _keys(BASIC), _keys(other)
    assert (a["1"], a["2"]) == (b["1"], b["2"]) and a["3"] != b["3"]


def test_keys_do_not_depend_on_node_ids() -> None:
    renamed = {
        "a": BASIC["1"],
        "b": {"class_type": "ImageInvert", "inputs": {"image": ["a", 0]}},
        "c": {"class_type": "SaveImage", "inputs": {"images": ["b", 0], "filename_prefix": "probe/basic"}},
    }
    assert list(_keys(renamed).values()) == list(_keys(BASIC).values())


def test_int_and_float_literals_are_the_same_key() -> None:
    other = copy.deepcopy(BASIC)
    other["1"]["inputs"]["width"] = 64.0
    assert _keys(BASIC)["1"] == _keys(other)["1"]


def test_is_changed_value_is_part_of_the_key() -> None:
    assert _keys(BASIC, {"1": "hash-a"})["1"] != _keys(BASIC, {"1": "hash-b"})["1"]
    never = object()
    assert _keys(BASIC, {"1": never})["1"] != _keys(BASIC, {"1": object()})["1"]
