import pytest
from pydantic import ValidationError

from comfyfleet.jobs.params import GenerateParams
from comfyfleet.jobs.templates import TEMPLATES, UnknownTemplate, render_template
from comfyfleet.jobs.workflow import (
    ParamError,
    apply_params,
    check_shape,
    copy_json,
    model_needs,
    rename_input_images,
    workflow_hash,
)

TXT2IMG = TEMPLATES["txt2img"]


def test_overrides_land_on_the_right_nodes():
    wf = apply_params(TXT2IMG, GenerateParams(prompt="a fox", negative_prompt="ugly", seed=7, steps=9, cfg=4.5,
                                              width=512, height=768, checkpoint="v1-5.safetensors"))
    assert wf["6"]["inputs"]["text"] == "a fox"  # linked to KSampler.positive
    assert wf["7"]["inputs"]["text"] == "ugly"  # linked to KSampler.negative
    assert wf["3"]["inputs"]["seed"] == 7 and wf["3"]["inputs"]["steps"] == 9 and wf["3"]["inputs"]["cfg"] == 4.5
    assert (wf["5"]["inputs"]["width"], wf["5"]["inputs"]["height"]) == (512, 768)
    assert wf["4"]["inputs"]["ckpt_name"] == "v1-5.safetensors"
    assert TXT2IMG["6"]["inputs"]["text"] == "a photo of a cat", "the template itself is untouched"


def test_rendering_never_changes_the_template():
    before = copy_json(TEMPLATES)
    a = render_template("txt2img", GenerateParams(prompt="a fox", lora="x.safetensors", seed=1))
    b = render_template("txt2img", GenerateParams(seed=1))
    assert TEMPLATES == before
    assert a["6"]["inputs"]["text"] == "a fox" and b["6"]["inputs"]["text"] == "a photo of a cat"
    assert all(n["class_type"] != "LoraLoader" for n in b.values())


@pytest.mark.parametrize(("name", "params"), [
    ("weightless", GenerateParams()),
    ("weightless", GenerateParams(width=64, height=128, filename_prefix="p")),
    ("txt2img", GenerateParams(seed=7)),
    ("txt2img", GenerateParams(seed=1, steps=3, lora="x.safetensors", lora_strength=0.5, prompt="ünïcode \u2028")),
])
def test_a_rendered_template_is_apply_params_on_the_template_and_its_own(name, params):
    written, expected_written = [], []
    rendered = render_template(name, params, written)
    assert rendered == apply_params(TEMPLATES[name], params, expected_written) and written == expected_written
    # nothing in it is shared with the template or with the next render
    again = render_template(name, params)
    for node_id, node in rendered.items():
        assert node is not TEMPLATES.get(node_id) and node is not again[node_id]
        assert node["inputs"] is not again[node_id]["inputs"]
        for key, value in node["inputs"].items():
            if isinstance(value, list):
                assert value is not again[node_id]["inputs"][key]


def test_copy_json_shares_nothing_mutable():
    data = {"a": [1, {"b": [2, 3]}], "c": {"d": "e"}, "f": None}
    copied = copy_json(data)
    assert copied == data
    copied["a"][1]["b"].append(4)
    copied["c"]["d"] = "x"
    assert data == {"a": [1, {"b": [2, 3]}], "c": {"d": "e"}, "f": None}


def test_lora_is_inserted_and_consumers_rewired():
    wf = apply_params(TXT2IMG, GenerateParams(lora="pixel.safetensors", lora_strength=0.6))
    lora_id = next(n for n, node in wf.items() if node["class_type"] == "LoraLoader")
    assert wf[lora_id]["inputs"] == {"model": ["4", 0], "clip": ["4", 1], "lora_name": "pixel.safetensors",
                                     "strength_model": 0.6, "strength_clip": 0.6}
    assert wf["3"]["inputs"]["model"] == [lora_id, 0]
    assert wf["6"]["inputs"]["clip"] == [lora_id, 1] and wf["7"]["inputs"]["clip"] == [lora_id, 1]
    assert wf["8"]["inputs"]["vae"] == ["4", 2], "VAE still comes from the checkpoint"
    assert model_needs(wf).loras == {"pixel.safetensors"}


def test_existing_lora_loader_is_updated_not_duplicated():
    wf = apply_params(TXT2IMG, GenerateParams(lora="a.safetensors"))
    wf2 = apply_params(wf, GenerateParams(lora="b.safetensors", lora_strength=0.3))
    loaders = [n for n in wf2.values() if n["class_type"] == "LoraLoader"]
    assert len(loaders) == 1 and loaders[0]["inputs"]["lora_name"] == "b.safetensors"
    assert loaders[0]["inputs"]["strength_model"] == 0.3


def test_param_without_a_target_node_names_the_param():
    weightless = TEMPLATES["weightless"]
    with pytest.raises(ParamError) as err:
        apply_params(weightless, GenerateParams(prompt="x"))
    assert err.value.param == "prompt"
    with pytest.raises(ParamError, match="lora"):
        apply_params(weightless, GenerateParams(lora="x.safetensors"))
    # width applies to EmptyImage too
    assert apply_params(weightless, GenerateParams(width=256))["1"]["inputs"]["width"] == 256


def test_params_are_validated_with_field_names():
    with pytest.raises(ValidationError, match="steps"):
        GenerateParams(steps=0)
    with pytest.raises(ValidationError, match="width"):
        GenerateParams(width=1000 + 1)
    with pytest.raises(ValidationError, match="nonsense"):
        GenerateParams.model_validate({"nonsense": 1})


def test_render_template_picks_random_seed_once_and_rejects_unknown():
    a = render_template("txt2img", GenerateParams())
    b = render_template("txt2img", GenerateParams())
    assert a["3"]["inputs"]["seed"] != b["3"]["inputs"]["seed"]
    assert render_template("txt2img", GenerateParams(seed=5))["3"]["inputs"]["seed"] == 5
    with pytest.raises(UnknownTemplate, match="txt2img"):
        render_template("nope", GenerateParams())


def test_model_needs_and_shape_checks():
    assert model_needs(TXT2IMG).checkpoints == {"sd_xl_base_1.0.safetensors"}
    assert check_shape({}) and check_shape({})[0].type == "prompt_no_outputs"
    issues = check_shape({"1": {"inputs": {}}, "2": {"class_type": "ImageInvert", "inputs": {"image": ["9", 0]}}})
    assert [(i.node_id, i.input_name) for i in issues] == [("1", None), ("2", "image")]


def test_rename_input_images_points_loadimage_at_uploaded_name():
    wf = {"1": {"class_type": "LoadImage", "inputs": {"image": "cat.png"}},
          "2": {"class_type": "LoadImage", "inputs": {"image": "other.png"}}}
    out = rename_input_images(wf, {"cat.png": "comfyfleet-x/cat.png"})
    assert out["1"]["inputs"]["image"] == "comfyfleet-x/cat.png" and out["2"]["inputs"]["image"] == "other.png"
    assert wf["1"]["inputs"]["image"] == "cat.png"


HASHED = {
    "3": {"class_type": "KSampler", "inputs": {"seed": 42, "steps": 4, "model": ["4", 0]}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
}


def test_workflow_hash_ignores_key_order_but_not_values():
    reordered = {"4": HASHED["4"], "3": {"inputs": dict(reversed(HASHED["3"]["inputs"].items())),
                                         "class_type": "KSampler"}}
    assert workflow_hash(HASHED) == workflow_hash(reordered)
    changed = {**HASHED, "3": {"class_type": "KSampler", "inputs": {**HASHED["3"]["inputs"], "seed": 43}}}
    assert workflow_hash(HASHED) != workflow_hash(changed)


def test_workflow_hash_keeps_the_canonical_form_of_stored_hashes():
    # Compact separators, sorted keys, UTF-8 as is: the form Storage metadata and Firestore records hold.
    graph = {"3": {"class_type": "KSampler", "inputs": {"seed": 42, "text": "café"}}}
    assert workflow_hash(graph) == "a2fdce4253393777a6633462ab19161d96b6b40704ed5862e026c36fc3642c15"


def test_isolate_outputs_puts_each_jobs_files_in_its_own_folder():
    from comfyfleet.jobs.workflow import isolate_outputs

    wf = {"9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "txt2img", "images": ["8", 0]}},
          "10": {"class_type": "SaveAnimatedWEBP", "inputs": {"filename_prefix": "/anim/a", "fps": 6}},
          "11": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
          "12": {"class_type": "SaveImage", "inputs": {"filename_prefix": ["5", 0]}}}
    out = isolate_outputs(wf, "j1")
    assert out["9"]["inputs"]["filename_prefix"] == "comfyfleet-j1/txt2img"
    assert out["10"]["inputs"]["filename_prefix"] == "comfyfleet-j1/anim/a"
    assert out["11"] == wf["11"] and out["12"] == wf["12"], "no prefix, or a linked one: unchanged"
    assert wf["9"]["inputs"]["filename_prefix"] == "txt2img", "the job's own graph is not changed"
