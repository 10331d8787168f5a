"""Job record fields are JSON exactly as json.dumps writes them (compare-and-set compares stored text)."""

import json

import pytest

from comfyfleet.jobs.model import Job
from comfyfleet.store.jobrepo import _json, decode_job, encode_fields


@pytest.mark.parametrize("value", [
    None, True, False, 0, -7, 2**70, "", "plain", 'quote " backslash \\ newline \n tab \t', "café 😀", "\x00\x1f",
    [], {}, [1, "a", None], {"k": [1.5, {"n": None}]}, 0.1, 1e16, -0.0, float("inf"), float("nan"), 3.0,
    {"é": "ü"}, [[], {}],
])
def test_field_json_is_json_dumps_character_for_character(value):
    assert _json(value) == json.dumps(value, separators=(",", ":"))


def test_a_record_round_trips():
    job = Job(owner="zoë", workflow={"1": {"class_type": "CLIPTextEncode", "inputs": {"text": "😀", "w": 1.0}}},
              params={"seed": 3}, pool="gpu", idempotency_key="k")
    fields = encode_fields(job)
    assert fields == {k: json.dumps(v, separators=(",", ":")) for k, v in job.model_dump(mode="json").items()}
    assert decode_job(job.id, fields) == job
