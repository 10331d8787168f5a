"""Job access tokens: short-lived, job-scoped HMAC tokens a browser can put in a URL.

A page cannot send an Authorization header from `EventSource`, `new WebSocket()` or `<img src>`, and a
Firebase ID token (or a static API token) must never appear in a URL: URLs end up in logs, history and
Referer headers. So every job the API returns carries `accessToken`: it opens that one job's event
stream, WebSocket and output files, for that job's owner, until it expires, and nothing else.

Format: `<expires>.<signature>`, signature = base64url(HMAC-SHA256(secret, "v1|<job id>|<owner>|<expires>")).
The job id comes from the URL and the owner from the job record, so neither travels in the token.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
from dataclasses import dataclass

import redis

from comfyfleet.keys import Keys

VERSION = "v1"


class TokenError(Exception):
    """The token is malformed, expired, or was not made for this job."""


@functools.lru_cache(maxsize=8)
def _keyed(secret: bytes) -> hmac.HMAC:
    """HMAC-SHA256 with the key taken in (its padded inner and outer hashes); copied per token, which saves
    setting the key up again on each response."""
    return hmac.new(secret, digestmod=hashlib.sha256)


def _mac(secret: bytes, job_id: str, owner: str, expires: int) -> str:
    mac = _keyed(secret).copy()
    mac.update(f"{VERSION}|{job_id}|{owner}|{expires}".encode())
    return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()


def sign(secret: bytes, job_id: str, owner: str, expires: int) -> str:
    return f"{expires}.{_mac(secret, job_id, owner, expires)}"


def verify(secret: bytes, token: str, job_id: str, owner: str, now: float) -> int:
    """Check a token for (job, owner) at `now`; returns its expiry time or raises TokenError."""
    expires_text, dot, mac = token.partition(".")
    if not dot or not expires_text.isdigit() or len(expires_text) > 12 or not mac:
        raise TokenError("malformed access token")
    expires = int(expires_text)
    if not hmac.compare_digest(mac.encode(), _mac(secret, job_id, owner, expires).encode()):
        raise TokenError("the access token is not valid for this job")
    if expires <= now:
        raise TokenError("the access token has expired; read the job again for a fresh one")
    return expires


@dataclass(frozen=True)
class JobTokens:
    """Signs and checks job access tokens with one secret and lifetime."""

    secret: bytes
    ttl_seconds: int

    def issue(self, job_id: str, owner: str, now: float) -> tuple[str, int]:
        """A token and its expiry, rounded up to the minute so one job's responses share a token."""
        expires = (int(now + self.ttl_seconds) // 60 + 1) * 60
        return sign(self.secret, job_id, owner, expires), expires

    def check(self, token: str, job_id: str, owner: str, now: float) -> int:
        return verify(self.secret, token, job_id, owner, now)


def shared_secret(conn: redis.Redis, keys: Keys, configured: str) -> bytes:
    """The configured secret, else one random secret per install kept in Redis (every replica agrees)."""
    if configured:
        return configured.encode()
    key = f"{keys.prefix}:api:token-secret"
    conn.set(key, secrets.token_urlsafe(32), nx=True)
    value = conn.get(key)
    if value is None:  # only if someone deleted it between the two calls
        raise RuntimeError(f"could not read the job token secret at {key}")
    return value if isinstance(value, bytes) else str(value).encode()
