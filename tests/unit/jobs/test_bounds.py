"""Workflow bounds and `_meta` checks at the edge (issue 9: a value nested ~250 deep poisoned the store)."""

import json
from pathlib import Path

import pytest

from comfyfleet.jobs.validation import (
    DEFAULT_BOUNDS,
    WorkflowRefused,
    WorkflowTooLarge,
    check_bounds,
    check_meta,
    is_file_like,
    merge_catalogs,
    validate_workflow,
)

BOUNDS = {"max_depth": 32, "max_nodes": 100, "max_bytes": 64 * 1024}


def nested(depth: int) -> object:
    value: object = "x"
    for _ in range(depth):
        value = {"a": value}
    return value


def node(**inputs: object) -> dict:
    return {"class_type": "SaveImage", "inputs": inputs}


@pytest.mark.parametrize(("workflow", "field"), [
    ({"1": {**node(), "_meta": nested(250)}}, "workflow.1._meta.a"),
    ({"1": node(extra=nested(5000))}, "workflow.1.inputs.extra.a"),
    ({"1": node(extra=json.loads("[" * 40 + "1" + "]" * 40))}, "workflow.1.inputs.extra.0"),
    ({str(i): node() for i in range(101)}, "workflow"),
    ({"1": node(text="x" * 70_000)}, "workflow"),
])
def test_too_deep_or_too_big_names_where(workflow, field):
    with pytest.raises(WorkflowTooLarge) as err:
        check_bounds(workflow, **BOUNDS)
    assert err.value.field.startswith(field)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 2**64, -(2**63) - 1])
def test_numbers_json_and_records_cannot_carry_are_refused(value):
    with pytest.raises(WorkflowRefused) as err:
        check_bounds({"1": node(x=[0, value])}, **BOUNDS)
    assert err.value.field == "workflow.1.inputs.x.1" and err.value.code == "invalid_workflow"
    assert not isinstance(err.value, WorkflowTooLarge)


@pytest.mark.parametrize("value", [2**64 - 1, -(2**63), 1e308, -0.0, True])
def test_64_bit_integers_and_finite_floats_pass(value):
    check_bounds({"1": node(seed=value)}, **BOUNDS)


def test_a_real_workflow_passes_the_bounds():
    wf = json.loads((Path(__file__).resolve().parents[3] / "examples" / "txt2img.json").read_text())
    check_bounds(wf, **BOUNDS)


def test_meta_must_be_a_flat_object_of_scalars():
    ok = {"1": {**node(), "_meta": {"title": "Save"}}}
    assert check_meta(ok) == []
    found = {(i.node_id, i.input_name) for i in check_meta({
        "1": {**node(), "_meta": {"title": {"deep": 1}}},
        "2": {**node(), "_meta": "a string"},
        "3": {**node(), "_meta": {"title": "x" * 2000}},
    })}
    assert found == {("1", "_meta.title"), ("2", "_meta"), ("3", "_meta.title")}


def test_meta_issues_come_out_of_validate_workflow():
    issues = validate_workflow({"1": {**node(), "_meta": [1]}}, None)
    assert [(i.node_id, i.input_name, i.type) for i in issues] == [("1", "_meta", "invalid_meta")]


LOADER = {"input": {"required": {"lora_name": [["a.safetensors"], {}]}}, "output": ["MODEL"]}
LOADER_B = {"input": {"required": {"lora_name": [["b.safetensors"], {}]}, "optional": {"x": ["INT", {}]}},
            "output": ["MODEL"]}
SAVE = {"input": {"required": {"images": ["IMAGE"]}}, "output": [], "output_node": True}


def test_merged_catalog_unites_combo_options_of_every_pod():
    merged = merge_catalogs([{"LoraLoader": LOADER, "SaveImage": SAVE}, {"LoraLoader": LOADER_B}])
    assert merged["LoraLoader"]["input"]["required"]["lora_name"][0] == ["a.safetensors", "b.safetensors"]
    assert "x" in merged["LoraLoader"]["input"]["optional"]
    assert LOADER["input"]["required"]["lora_name"][0] == ["a.safetensors"], "inputs are not modified"
    new_form = [{"C": {"input": {"required": {"f": ["COMBO", {"options": ["1.png"]}]}}}},
                {"C": {"input": {"required": {"f": ["COMBO", {"options": ["2.png"]}]}}}}]
    assert merge_catalogs(new_form)["C"]["input"]["required"]["f"][1]["options"] == ["1.png", "2.png"]


def test_file_like_combo_misses_are_advisory_when_not_strict():
    catalog = {"LoraLoader": LOADER, "SaveImage": SAVE}
    wf = {"1": {"class_type": "LoraLoader", "inputs": {"lora_name": "sub/new.safetensors"}},
          "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}
    assert [i.type for i in validate_workflow(wf, catalog)] == ["value_not_in_list"]
    assert validate_workflow(wf, catalog, strict_files=False) == []
    wf["1"]["inputs"]["lora_name"] = 7
    assert validate_workflow(wf, catalog, strict_files=False), "a non-file value is still checked"


@pytest.mark.parametrize(("options", "value", "expected"), [
    (["a.safetensors", "b.ckpt"], "c.safetensors", True),
    (["a.png"], "sub/x.png", True),
    (["euler", "dpmpp_2m"], "heun", False),
    (["a.safetensors"], 3, False),
    (None, "x.png", False),
])
def test_file_like(options, value, expected):
    assert is_file_like(options, value) is expected


def test_generation_jobs_get_the_same_bounds():
    from comfyfleet.operator.job_spec import InvalidJobSpec, build_workflow
    from comfyfleet.operator.models import GenerationJobSpec

    spec = GenerationJobSpec.model_validate({"workflow": {"1": {**node(), "_meta": nested(250)}}})
    with pytest.raises(InvalidJobSpec, match=r"spec\.workflow\.1\._meta\.a.*deeper than 32"):
        build_workflow(spec)


def test_the_operator_bounds_are_the_api_defaults():
    from comfyfleet.settings import ApiSettings

    fields = ApiSettings.model_fields
    assert {k: fields[f"max_workflow_{k.removeprefix('max_')}"].default for k in DEFAULT_BOUNDS} == DEFAULT_BOUNDS
