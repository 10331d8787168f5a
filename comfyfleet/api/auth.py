"""Who is calling: pluggable bearer-token authentication (static tokens, none for dev, Firebase)."""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from typing import Protocol

from comfyfleet.settings import ApiSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Principal:
    owner: str
    admin: bool = False


class AuthError(Exception):
    """The credentials are missing or not valid (401)."""


class AuthUnavailable(AuthError):
    """The credentials could not be checked right now (identity backend unreachable): 503, not 401."""


class Authenticator(Protocol):
    async def authenticate(self, token: str | None) -> Principal: ...


class NoAuth:
    """Development only: everyone is the admin user `local`. Refused on non-loopback binds by settings."""

    async def authenticate(self, token: str | None) -> Principal:
        return Principal(owner="local", admin=True)


class StaticTokenAuth:
    """Bearer tokens listed in settings, each standing for one owner (optionally admin)."""

    def __init__(self, settings: ApiSettings):
        self._tokens = [(t.token.encode(), Principal(owner=t.owner, admin=t.admin)) for t in settings.api_tokens]

    async def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise AuthError("missing bearer token")
        given = token.encode()
        for expected, principal in self._tokens:
            if hmac.compare_digest(given, expected):
                return principal
        raise AuthError("invalid bearer token")


def build_authenticator(settings: ApiSettings) -> Authenticator:
    if settings.auth_mode == "none":
        log.warning("=" * 72)
        log.warning("AUTH IS OFF (COMFYFLEET_AUTH_MODE=none): every caller is admin. Local development only.")
        log.warning("=" * 72)
        return NoAuth()
    if settings.auth_mode == "static":
        return StaticTokenAuth(settings)
    from comfyfleet.api.firebase_auth import FirebaseAuth  # optional dependency, imported only when used

    return FirebaseAuth(settings)
