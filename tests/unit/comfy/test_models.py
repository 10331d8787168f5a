"""HTTP bodies recorded from a real ComfyUI parse into the client's result types and errors."""

from __future__ import annotations

import pytest

from comfyfleet.comfy.errors import ComfyProtocolError, ComfyValidationError
from comfyfleet.comfy.models import (
    OutputRef,
    UploadedImage,
    combo_input,
    combo_options,
    literal_value,
    node_input_options,
    parse_history,
    parse_history_entry,
    parse_outputs,
    parse_queue,
    parse_submit,
    validation_error_from,
)
from tests.unit.comfy.recorded import load_capture


def _history(name: str, key: str | None = None):
    capture = load_capture(name)
    body = capture["body"] if key is None else capture[key]
    (prompt_id,) = body.keys()
    return parse_history(prompt_id, body)


def test_history_basic_success():
    entry = _history("get_history_basic.json")
    assert entry.prompt_id == "0410bd28-b5e4-4fa3-8686-3715954cb54d"
    assert entry.number == 3 and entry.client_id == "probe-client-1"
    assert entry.status == "success" and entry.completed
    assert entry.outputs == [OutputRef("3", "basic_00001_.png", "probe", "output")]
    result = entry.to_run_result()
    assert (result.status, result.error, result.cached_nodes) == ("success", None, [])
    assert result.outputs == entry.outputs


def test_history_cached_rerun_reports_cached_nodes_and_old_filename():
    result = _history("get_history_basic_cached.json").to_run_result()
    assert result.status == "success"
    assert result.cached_nodes == ["1", "2", "3"]
    assert [o.filename for o in result.outputs] == ["basic_00001_.png"]


def test_history_runtime_error():
    result = _history("runtime_error_run.json", "history").to_run_result()
    assert result.status == "error" and result.outputs == []
    assert result.error is not None
    assert (result.error.node_id, result.error.node_type) == ("2", "LoadImage")
    assert result.error.exception_type == "PIL.UnidentifiedImageError"
    assert result.error.traceback


def test_history_interrupt_is_interrupted_not_error():
    entry = _history("interrupt_global.json", "history")
    assert entry.status_str == "error" and not entry.completed  # how the server reports it
    result = entry.to_run_result()
    assert result.status == "interrupted" and result.error is None
    assert result.interrupted is not None and result.interrupted.node_id == "12"


def test_history_status_only_from_queue_ops():
    capture = load_capture("queue_ops.json")
    interrupted = parse_history_entry("a", {"outputs": {}, "status": capture["history_A_status"]})
    assert interrupted.status == "interrupted"
    ok = parse_history_entry("c", {"outputs": {}, "status": capture["history_C_status"]})
    assert ok.status == "success"


def test_history_error_without_messages_still_has_an_error():
    result = parse_history_entry("x", {"status": {"status_str": "error", "completed": False}}).to_run_result()
    assert result.status == "error" and result.error is not None


def test_unknown_history_is_none():
    assert (
        parse_history(
            "00000000-0000-0000-0000-000000000000", load_capture("get_history_unknown_id.json")["body"]
        )
        is None
    )
    with pytest.raises(ComfyProtocolError):
        parse_history("x", [])


def test_outputs_keep_other_kinds_and_skip_non_files():
    outputs = {
        "9": {"images": [{"filename": "a.webp", "subfolder": "", "type": "output"}], "animated": [True]},
        "10": {
            "gifs": [{"filename": "v.mp4", "subfolder": "vid", "type": "output", "format": "video/h264-mp4"}]
        },
        "11": {"text": ["hello"]},
    }
    refs = parse_outputs(outputs)
    assert refs == [
        OutputRef("9", "a.webp", "", "output", "images"),
        OutputRef("10", "v.mp4", "vid", "output", "gifs"),
    ]
    preview = load_capture("loadimage_run.json")["subfolder_history_outputs"]
    assert parse_outputs(preview)[0].type == "temp"


def test_queue_entries_in_order_with_client_ids():
    capture = load_capture("queue_ops.json")
    state = parse_queue(capture["get_queue_1_running_3_pending"]["body"])
    ids = capture["ids"]
    assert state.running == [ids["A_running_long"]]
    assert state.pending == [ids["B"], ids["C"], ids["D"]]
    entry = state.find(ids["C"])
    assert entry is not None and entry.number == 25 and entry.client_id
    assert ids["D"] in state and "nope" not in state
    after = parse_queue(capture["get_queue_after_deletes"]["body"])
    assert ids["B"] not in after and ids["A_running_long"] in after.running
    idle = parse_queue(load_capture("get_queue_idle.json")["body"])
    assert (idle.running, idle.pending) == ([], [])


def test_submit_answers():
    result = parse_submit(load_capture("post_prompt_basic_response.json")["body"])
    assert result.prompt_id == "0410bd28-b5e4-4fa3-8686-3715954cb54d" and result.number == 3
    assert result.node_errors == []
    variants = load_capture("post_prompt_variants.json")
    assert parse_submit(variants["front_true"]["body"]).number == -6
    assert parse_submit(variants["number_5_5"]["body"]).number == 5.5
    with pytest.raises(ComfyProtocolError):
        parse_submit({"error": "?"})


INVALID = load_capture("post_prompt_invalid.json")

# case -> (error.type, [(node_id, class_type, [input names])])
EXPECTED_400 = {
    "missing_required_input": ("prompt_outputs_failed_validation", [("2", "ImageInvert", ["image"])]),
    "unknown_class_type": ("invalid_prompt", []),
    "link_to_missing_node": ("prompt_outputs_failed_validation", [("2", "ImageInvert", ["images"])]),
    "bad_value_type": ("prompt_outputs_failed_validation", [("1", "EmptyImage", ["width"])]),
    "value_below_min": ("prompt_outputs_failed_validation", [("1", "EmptyImage", ["width"])]),
    "no_output_node": ("prompt_no_outputs", []),
    "bad_output_slot": ("prompt_outputs_failed_validation", [("3", "SaveImage", [None])]),
    "missing_class_type": ("invalid_prompt", []),
    "no_prompt_key": ("no_prompt", []),
    "empty_prompt": ("prompt_no_outputs", []),
    "loadimage_missing_file": ("prompt_outputs_failed_validation", [("1", "LoadImage", ["image"])]),
    "unknown_class_upstream": ("invalid_prompt", []),
}


@pytest.mark.parametrize("case", sorted(EXPECTED_400))
def test_validation_errors_from_recorded_400s(case):
    response = INVALID[case]["response"]
    assert response["status"] == 400
    error = validation_error_from(response["body"])
    assert isinstance(error, ComfyValidationError)
    error_type, nodes = EXPECTED_400[case]
    assert error.error_type == error_type
    assert error.message == response["body"]["error"]["message"]
    got = [(n.node_id, n.class_type, [e.input_name for e in n.errors]) for n in error.node_errors]
    assert got == nodes
    text = str(error)
    assert error.message in text
    for node_id, class_type, inputs in nodes:
        assert f"node {node_id} ({class_type})" in text
        for name in inputs:
            if name:
                assert repr(name) in text


def test_validation_error_keeps_details_and_dependent_outputs():
    error = validation_error_from(INVALID["missing_required_input"]["response"]["body"])
    (node,) = error.node_errors
    assert node.dependent_outputs == ["3"]
    (err,) = node.errors
    assert (err.type, err.message, err.details) == (
        "required_input_missing",
        "Required input is missing",
        "image",
    )
    assert str(error) == (
        "prompt_outputs_failed_validation: Prompt outputs failed validation; "
        "node 2 (ImageInvert) input 'image': Required input is missing: image"
    )
    unknown = validation_error_from(INVALID["unknown_class_type"]["response"]["body"])
    assert unknown.details == "Node ID '#2'" and "NoSuchNode" in str(unknown)


def test_the_non_json_500_is_not_a_validation_answer():
    response = INVALID["non_json_body"]["response"]
    assert response["status"] == 500 and response["content_type"].startswith("text/plain")


def test_combo_options_old_and_new_forms():
    assert combo_options([["a.safetensors", "b.ckpt"], {"tooltip": "x"}]) == ["a.safetensors", "b.ckpt"]
    assert combo_options([["only"]]) == ["only"]
    assert combo_options(["COMBO", {"options": ["x", "y"], "tooltip": "t"}]) == ["x", "y"]
    assert combo_options(["COMBO", {}]) == []
    assert combo_options(["INT", {"default": 1}]) is None
    assert combo_options(None) is None


def test_combo_inputs_of_newer_servers():
    multi = combo_input(["COMBO", {"options": ["a", "b"], "multiselect": True}])
    assert multi is not None and multi.rejected(["a", "b"]) == [] and multi.rejected(["a", "c"]) == ["c"]
    single = combo_input([["a", "b"], {}])
    assert single is not None and single.rejected(["a"]) == [["a"]] and single.rejected("b") == []
    remote = combo_input(["COMBO", {"remote_combo": True}])
    assert remote is not None and remote.options == [] and remote.rejected("anything") == []
    assert combo_input(["INT", {"min": 0}]) is None


def test_literal_value_unwraps_comfyuis_list_wrapper():
    assert literal_value({"__value__": [1, 2]}) == [1, 2]
    assert literal_value(["4", 0]) == ["4", 0] and literal_value({"x": 1}) == {"x": 1}


def test_node_input_options_from_recorded_object_info():
    body = load_capture("get_object_info_LoadImage_after_upload.json")["body"]
    assert node_input_options(body, "LoadImage", "image") == [
        "example.png", "probe_upload (1).png", "probe_upload.png"
    ]  # fmt: skip
    assert (
        node_input_options(load_capture("get_object_info_unknown.json")["body"], "LoraLoader", "lora_name")
        == []
    )
    new_form = {
        "LoraLoader": {
            "input": {
                "required": {
                    "model": ["MODEL", {}],
                    "lora_name": ["COMBO", {"options": ["detail.safetensors"]}],
                }
            }
        }
    }
    assert node_input_options(new_form, "LoraLoader", "lora_name") == ["detail.safetensors"]
    assert node_input_options(new_form, "LoraLoader", "missing") == []


def test_uploaded_image_value_for_load_image():
    assert UploadedImage("a.png", "", "input").load_image_value == "a.png"
    assert UploadedImage("a.png", "probe_sub", "input").load_image_value == "probe_sub/a.png"


def test_errors_survive_pickling():
    import pickle

    from comfyfleet.comfy.errors import ComfyPromptLost

    error = validation_error_from(INVALID["missing_required_input"]["response"]["body"])
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) and copy.node_errors == error.node_errors
    lost = pickle.loads(pickle.dumps(ComfyPromptLost("p1")))
    assert lost.prompt_id == "p1" and "p1" in str(lost)
    proto = pickle.loads(pickle.dumps(ComfyProtocolError("boom", status_code=500, body="x")))
    assert (str(proto), proto.status_code, proto.body) == ("boom", 500, "x")


def test_a_refused_prompt_id_is_told_apart_from_an_invalid_workflow():
    # The 400 servers after 0.3.64 give a prompt_id that is not a canonical lowercase UUID.
    body = {"error": {"type": "invalid_prompt_id", "message": "prompt_id must be a valid UUID", "details": "",
                      "extra_info": {}}, "node_errors": {}}
    assert validation_error_from(body).rejects_prompt_id
    assert not validation_error_from(INVALID["missing_required_input"]["response"]["body"]).rejects_prompt_id
