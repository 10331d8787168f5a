"""Job access tokens: what opens what, and for how long (pure, no server)."""

from __future__ import annotations

import pytest

from comfyfleet.api.schemas import with_token
from comfyfleet.api.tokens import JobTokens, TokenError, sign, verify

SECRET = b"s" * 32
NOW = 1_800_000_000.0


def test_a_token_opens_its_own_job_until_it_expires():
    token = sign(SECRET, "job-1", "alice", int(NOW) + 60)
    assert verify(SECRET, token, "job-1", "alice", NOW) == int(NOW) + 60


@pytest.mark.parametrize(("token_for", "checked_as", "now", "message"), [
    (("job-1", "alice", NOW + 60), ("job-2", "alice"), NOW, "not valid for this job"),
    (("job-1", "alice", NOW + 60), ("job-1", "bob"), NOW, "not valid for this job"),
    (("job-1", "alice", NOW + 60), ("job-1", "alice"), NOW + 60, "expired"),
    (("job-1", "alice", NOW + 60), ("job-1", "alice"), NOW + 3600, "expired"),
])
def test_a_token_opens_nothing_else(token_for, checked_as, now, message):
    job, owner, expires = token_for
    token = sign(SECRET, job, owner, int(expires))
    with pytest.raises(TokenError, match=message):
        verify(SECRET, token, *checked_as, now)


@pytest.mark.parametrize("token", [
    "", "abc", ".sig", "123.", "-5.sig", "12x.sig", "9" * 13 + ".sig",
    "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln",  # a Firebase ID token (JWT) is never accepted
    "alice-token-0123456789abcdef",  # nor a static API token
])
def test_malformed_tokens_are_refused(token):
    with pytest.raises(TokenError):
        verify(SECRET, token, "job-1", "alice", NOW)


def test_a_token_made_with_another_secret_is_refused():
    token = sign(b"x" * 32, "job-1", "alice", int(NOW) + 60)
    with pytest.raises(TokenError, match="not valid"):
        verify(SECRET, token, "job-1", "alice", NOW)


def test_a_changed_expiry_breaks_the_signature():
    token = sign(SECRET, "job-1", "alice", int(NOW) + 60)
    forged = str(int(NOW) + 10**6) + token[token.index("."):]
    with pytest.raises(TokenError, match="not valid"):
        verify(SECRET, forged, "job-1", "alice", NOW)


def test_issued_tokens_live_at_least_the_ttl_and_repeat_within_a_minute():
    tokens = JobTokens(SECRET, ttl_seconds=900)
    token, expires = tokens.issue("job-1", "alice", NOW)
    assert NOW + 900 <= expires <= NOW + 960
    assert tokens.issue("job-1", "alice", NOW + 1)[0] == token, "one job's responses share a token"
    assert tokens.check(token, "job-1", "alice", NOW + 899) == expires


@pytest.mark.parametrize(("url", "token", "expected"), [
    ("/api/comfyui/outputs/j/a.png", "T", "/api/comfyui/outputs/j/a.png?token=T"),
    ("/x?download=1", "T", "/x?download=1&token=T"),
    ("https://storage.example/a.png?X-Goog-Signature=s", "T", "https://storage.example/a.png?X-Goog-Signature=s"),
    (None, "T", None),
    ("/api/comfyui/outputs/j/a.png", None, "/api/comfyui/outputs/j/a.png"),
])
def test_only_our_own_output_urls_get_the_token(url, token, expected):
    assert with_token(url, token) == expected


@pytest.mark.parametrize("secret", [SECRET, b"x" * 32, b"k" * 100])
def test_the_signature_is_the_documented_hmac_whatever_was_signed_before(secret):
    import base64
    import hashlib
    import hmac

    for job, owner, expires in [("job-1", "alice", 1), ("job-2", "bob", 2), ("job-1", "alice", 1)]:
        digest = hmac.new(secret, f"v1|{job}|{owner}|{expires}".encode(), hashlib.sha256).digest()
        expected = f"{expires}." + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        assert sign(secret, job, owner, expires) == expected
