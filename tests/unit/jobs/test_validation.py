import json
from pathlib import Path

from comfyfleet.comfy.models import combo_options
from comfyfleet.jobs.validation import validate_workflow

CAPTURES = Path(__file__).resolve().parents[2] / "captures"


def catalog() -> dict:
    """Real /object_info specs captured from ComfyUI 0.3.64, plus a checkpoint loader in the newer COMBO form."""
    cat = {}
    for name in ("EmptyImage", "SaveImage", "ImageBlur", "LoadImage"):
        body = json.loads((CAPTURES / f"get_object_info_{name}.json").read_text())
        cat.update(body["body"])
    cat["ImageInvert"] = {"input": {"required": {"image": ["IMAGE"]}}, "output": ["IMAGE"], "output_node": False}
    cat["CheckpointLoaderSimple"] = {
        "input": {"required": {"ckpt_name": ["COMBO", {"options": ["sd_xl_base_1.0.safetensors"]}]}},
        "output": ["MODEL", "CLIP", "VAE"], "output_node": False,
    }
    return cat


BASIC = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
}


def test_valid_workflow_has_no_issues():
    assert validate_workflow(BASIC, catalog()) == []


def test_each_mistake_names_node_and_input():
    wf = json.loads(json.dumps(BASIC))
    del wf["2"]["inputs"]["image"]
    wf["1"]["inputs"]["width"] = 0
    wf["4"] = {"class_type": "NoSuchNode", "inputs": {}}
    wf["5"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "missing.safetensors"}}
    found = {(i.node_id, i.input_name, i.type) for i in validate_workflow(wf, catalog())}
    assert ("2", "image", "required_input_missing") in found
    assert ("1", "width", "value_smaller_than_min") in found
    assert ("4", None, "invalid_prompt") in found
    assert ("5", "ckpt_name", "value_not_in_list") in found


def test_wrong_type_and_no_output():
    wf = {"1": {"class_type": "EmptyImage", "inputs": {"width": "abc", "height": 64, "batch_size": 1, "color": 0}}}
    types = {i.type for i in validate_workflow(wf, catalog())}
    assert "invalid_input_type" in types
    wf["1"]["inputs"]["width"] = 64
    assert [i.type for i in validate_workflow(wf, catalog())] == ["prompt_no_outputs"]


def test_uploaded_input_images_are_allowed_in_loadimage():
    wf = {"1": {"class_type": "LoadImage", "inputs": {"image": "mine.png"}},
          "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}
    assert any(i.input_name == "image" for i in validate_workflow(wf, catalog()))
    assert validate_workflow(wf, catalog(), frozenset({"mine.png"})) == []


def test_without_catalog_only_shape_is_checked():
    assert validate_workflow({"1": {"class_type": "Anything", "inputs": {}}}, None) == []


def test_combo_forms():
    assert combo_options([["a", "b"], {}]) == ["a", "b"]
    assert combo_options(["COMBO", {"options": ["c"]}]) == ["c"]
    assert combo_options(["INT", {"min": 1}]) is None


def test_newer_catalog_forms_are_checked_as_comfyui_checks_them():
    cat = catalog()
    cat["Pick"] = {
        "input": {"required": {
            "styles": ["COMBO", {"options": ["a", "b"], "multiselect": True}],
            "remote": ["COMBO", {"remote_combo": True}],
        }},
        "output": ["STRING"], "output_node": False,
    }  # fmt: skip
    wf = json.loads(json.dumps(BASIC))
    wf["4"] = {"class_type": "Pick", "inputs": {"styles": ["a", "b"], "remote": "fetched-by-the-browser"}}
    wf["1"]["inputs"]["width"] = {"__value__": 64}
    assert validate_workflow(wf, cat) == []
    wf["4"]["inputs"]["styles"] = ["a", "zzz"]
    wf["1"]["inputs"]["width"] = {"__value__": 0}
    issues = {(i.node_id, i.input_name, i.type) for i in validate_workflow(wf, cat)}
    assert issues == {("4", "styles", "value_not_in_list"), ("1", "width", "value_smaller_than_min")}
