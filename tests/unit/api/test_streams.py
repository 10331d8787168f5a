"""Stream bookkeeping: event ids, the per-user stream cap, settings for browsers (pure, no server)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from comfyfleet.api.errors import ApiError
from comfyfleet.api.events import StreamGate, parse_last_event_id
from comfyfleet.api.routes.stream import origin_allowed
from comfyfleet.settings import ApiSettings
from comfyfleet.store.jobevents import format_event_id, parse_event_id, parse_message


@pytest.mark.parametrize(("text", "expected"), [
    ("1733050000000-0", (1733050000000, 0)),
    ("1733050000000-12", (1733050000000, 12)),
    ("1733050000000", (1733050000000, 0)),
    (" 5-1 ", (5, 1)),
    ("", None), (None, None), ("abc", None), ("5-", None), ("-1", None), ("5-x", None), ("1.5-0", None),
])
def test_event_ids(text, expected):
    assert parse_event_id(text) == expected


def test_event_ids_order_as_redis_orders_them():
    ids = ["9-0", "10-0", "10-2", "10-10", "11-0"]
    assert sorted(ids, key=parse_event_id) == ids
    assert [format_event_id(parse_event_id(i)) for i in ids] == ids


def test_a_bad_last_event_id_is_a_422_naming_the_field():
    with pytest.raises(ApiError) as err:
        parse_last_event_id("yesterday", "Last-Event-ID")
    assert err.value.status_code == 422 and "Last-Event-ID" in str(err.value.detail)
    assert parse_last_event_id("", "lastEventId") is None


def test_messages_split_into_job_id_event_and_json():
    assert parse_message(b'job-1 5-0 progress {"a": "b c"}') == ("job-1", "5-0", "progress", '{"a": "b c"}')


def test_the_stream_cap_is_per_user_and_names_the_limit():
    gate = StreamGate(limit=2)
    r1, r2 = gate.acquire("alice"), gate.acquire("alice")
    with pytest.raises(ApiError) as err:
        gate.acquire("alice")
    assert err.value.status_code == 429 and "max_streams_per_user" in str(err.value.detail)
    assert err.value.details["limit"] == 2
    gate.acquire("bob")  # others are not affected
    r1()
    r1()  # giving back twice frees one slot only
    gate.acquire("alice")
    with pytest.raises(ApiError):
        gate.acquire("alice")
    r2()
    assert gate.open == {"alice": 1, "bob": 1}


@pytest.mark.parametrize(("origin", "host", "allowed", "ok"), [
    (None, "api:8000", [], True),  # not a browser
    ("http://api:8000", "api:8000", [], True),  # the dashboard, served by the API itself
    ("https://app.example.com", "api:8000", ["https://app.example.com"], True),
    ("https://evil.example", "api:8000", ["https://app.example.com"], False),
    ("https://APP.example.com", "api:8000", ["https://app.example.com"], True),
])
def test_websocket_origins(origin, host, allowed, ok):
    assert origin_allowed(origin, host, allowed) is ok


def _settings(**kw):
    return ApiSettings(auth_mode="none", _env_file=None, **kw)


def test_cors_origins_accept_a_comma_list():
    assert _settings(cors_origins="https://a.example, http://localhost:5173").cors_origins == [
        "https://a.example", "http://localhost:5173"]


@pytest.mark.parametrize("origin", ["*", "https://a.example/", "a.example", "https://a.example/app", "ftp://a"])
def test_cors_origins_refuse_what_is_not_an_origin(origin):
    with pytest.raises(ValidationError, match="cors_origins"):
        _settings(cors_origins=[origin])
