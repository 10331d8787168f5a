"""jsontext.dumps: what json.dumps writes, as parsed back, on the record and event paths."""

import json

import pytest

from comfyfleet.jsontext import dumps, json_text

VALUES: list[object] = [
    None, True, 0, -(2**63), 2**64 - 1, 2**70, -(2**80), 1.5, 1e16, -0.0, 5e-324, "", "text", "é 漢字 🎨", "\x00\n\"\\",
    [], {}, {"a": [1, {"b": None}], "ü": "ñ"}, {"1": {"class_type": "KSampler", "inputs": {"seed": 2**64 - 1}}},
]


@pytest.mark.parametrize("value", VALUES)
def test_parses_back_to_what_json_dumps_parses_back_to(value):
    text = dumps(value)
    assert isinstance(text, str)
    assert json.loads(text) == json.loads(json.dumps(value)) == value
    if not isinstance(value, str):
        assert " " not in text, "compact separators"


@pytest.mark.parametrize("value", [None, True, 7, "queued", "running", [], {}])
def test_the_values_scripts_compare_are_json_dumps_own_text(value):
    assert dumps(value) == json.dumps(value, separators=(",", ":"))


@pytest.mark.parametrize("value", [*VALUES, float("nan"), float("inf"), -float("inf"), 1e-7, (1, "a"),
                                   {"value": 0, "max": 0, "node": None, "fraction": 0.0}, [[[]]], {"k": [{}]}])
def test_json_text_is_json_dumps_to_the_character(value):
    assert json_text(value) == json.dumps(value, separators=(",", ":"))
    assert json_text(value) == json_text(value), "the one encoder keeps no state between calls"
