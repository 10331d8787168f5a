"""/object_info entries: identical to the captures where we have them, complete for the rest."""

from __future__ import annotations

import json

import pytest

from comfyfleet.sim.catalog import NODE_CLASSES, Models, node_info, object_info
from comfyfleet.sim.nodes import RUNNERS
from tests.unit.sim.recorded import capture

REQUIRED = [
    "CheckpointLoaderSimple", "LoraLoader", "LoraLoaderModelOnly", "CLIPTextEncode", "EmptyLatentImage", "KSampler",
    "VAEDecode", "VAEEncode", "SaveImage", "PreviewImage", "LoadImage", "ImageScale", "EmptyImage", "ImageInvert",
    "ImageBlur",
]  # fmt: skip


@pytest.mark.parametrize("name", ["EmptyImage", "ImageBlur", "SaveImage"])
def test_matches_capture(name: str, models: Models) -> None:
    expected = capture(f"get_object_info_{name}.json")["body"][name]
    # Compare as JSON text so key order counts too.
    assert json.dumps(node_info(name, models)) == json.dumps(expected)


def test_loadimage_lists_top_level_images_of_the_input_folder(models: Models) -> None:
    expected = capture("get_object_info_LoadImage_after_upload.json")["body"]["LoadImage"]
    for name in ("probe_upload.png", "probe_upload (1).png"):
        (models.input_dir / name).write_bytes(b"x")
    (models.input_dir / "notes.txt").write_text("not an image")
    (models.input_dir / "sub").mkdir()
    (models.input_dir / "sub" / "nested.png").write_bytes(b"x")
    assert json.dumps(node_info("LoadImage", models)) == json.dumps(expected)


def test_model_lists_come_from_configuration(models: Models) -> None:
    info = object_info(models)
    assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == models.checkpoints
    assert info["LoraLoader"]["input"]["required"]["lora_name"][0] == models.loras
    assert info["LoraLoaderModelOnly"]["input"]["required"]["lora_name"][0] == models.loras


def test_every_required_node_is_described_and_runnable(models: Models) -> None:
    info = object_info(models)
    assert set(REQUIRED) <= set(info) and set(NODE_CLASSES) == set(RUNNERS)
    for name in REQUIRED:
        entry = info[name]
        assert entry["name"] == name
        assert entry["input_order"] == {k: list(v) for k, v in entry["input"].items()}
        assert len(entry["output"]) == len(entry["output_is_list"]) == len(entry["output_name"])


def test_single_element_specs_serialise_like_tuples(models: Models) -> None:
    assert object_info(models)["ImageInvert"]["input"]["required"]["image"] == ["IMAGE"]
    assert object_info(models)["KSampler"]["input"]["required"]["seed"][1]["max"] == 2**64 - 1
