"""Pure parts of Firebase auth: claims -> principal, and error messages that never quote the token."""

from __future__ import annotations

import pytest

from comfyfleet.api.auth import AuthError
from comfyfleet.api.firebase_auth import _reason, principal_from_claims

TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1aWQtMSJ9.c2lnbmF0dXJlLXNlZ21lbnQ"


def test_uid_becomes_the_owner_and_only_true_is_admin():
    assert principal_from_claims({"uid": "u1", "admin": True}, "admin").admin is True
    for value in ("true", 1, "yes", None):
        assert principal_from_claims({"uid": "u1", "admin": value}, "admin").admin is False
    assert principal_from_claims({"sub": "u2", "role": True}, "role").owner == "u2"


def test_no_uid_is_refused():
    with pytest.raises(AuthError):
        principal_from_claims({"admin": True}, "admin")


@pytest.mark.parametrize("message", [
    f"Wrong number of segments in token: {TOKEN.encode()!r}",
    f"Can't parse segment: {TOKEN.split('.')[1]}",
    "Could not verify token signature.",
    f"Token {TOKEN} has something odd",
])
def test_reasons_never_quote_the_token(message):
    text = _reason(ValueError(message), TOKEN)
    assert TOKEN not in text and all(part not in text for part in TOKEN.split("."))
