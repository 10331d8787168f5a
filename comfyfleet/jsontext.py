"""Compact JSON text for what comfyfleet writes on its hot paths and only ever parses back, never compares as
text: a new record's workflow, job events, script arguments (the record fields writers compare keep
json.dumps's own text: store/jobrepo.py `_json`).

orjson writes it at a fifth to a tenth of the cost of json.dumps (a submit's record, event and arguments: ~30 us
of the API's ~0.4 ms per request before, ~10 us after). What orjson refuses (an integer beyond 64 bits) goes
through json's encoder, so every value json.dumps writes is written. Non-finite floats are the one
difference (orjson writes null where json.dumps writes NaN, which is not JSON): the API and the operator
refuse them at the edge (jobs/validation.py check_bounds), and params are bounded.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import orjson

_ENCODER = json.JSONEncoder(separators=(",", ":"))
# json's C encoder built once, without the circular-reference check (it needs a fresh dict per call; the values
# written here come from parsers and pydantic dumps and hold no cycles): JSONEncoder.encode builds one per call.
_make_c_encoder: Callable[..., Callable[[Any, int], Sequence[str]]] | None = getattr(json.encoder, "c_make_encoder",
                                                                                     None)
_c_encode = (_make_c_encoder(None, _ENCODER.default, json.encoder.encode_basestring_ascii, None, ":", ",", False,
                             False, True) if _make_c_encoder is not None else None)


def json_text(value: Any) -> str:
    """json.dumps(value, separators=(",", ":")) to the character: the text of record fields that writers compare,
    and what orjson refuses."""
    if _c_encode is None or isinstance(value, str):
        return _ENCODER.encode(value)
    return "".join(_c_encode(value, 0))


def dumps(value: Any) -> str:
    """json.dumps(value, separators=(",", ":")) as parsed back: the same data, non-ASCII text as UTF-8."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # an integer beyond 64 bits (or a type json knows and orjson does not)
        return json_text(value)
