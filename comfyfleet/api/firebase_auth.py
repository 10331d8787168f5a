"""Firebase ID-token authentication: uid -> job owner, a custom claim -> admin rights.

firebase-admin verifies the token's RS256 signature against Google's published certificates (cached by their
Cache-Control), its expiry, audience (the project id) and issuer; with `firebase_check_revoked` it also asks the
Auth backend whether the user's tokens were revoked or the user disabled. Nothing of the token itself is ever
logged or echoed back: messages name only what was wrong with it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from comfyfleet.api.auth import AuthError, AuthUnavailable, Principal
from comfyfleet.firebase_app import firebase_app
from comfyfleet.settings import ApiSettings

log = logging.getLogger(__name__)

# A few seconds of tolerance for clocks that drift between the client, Google and this pod; firebase-admin
# allows 0-60 and defaults to 0, which makes freshly minted tokens fail on a pod whose clock runs behind.
CLOCK_SKEW_SECONDS = 5
# Firebase ID tokens are ~1 KiB (a few KiB with large custom claims); anything far longer is not one.
MAX_TOKEN_CHARS = 8192


class FirebaseAuth:
    """Verifies `Authorization: Bearer <Firebase ID token>`; uid becomes the owner."""

    def __init__(self, settings: ApiSettings):
        self.settings = settings
        self.check_revoked = settings.firebase_check_revoked
        self.admin_claim = settings.firebase_admin_claim
        self._app = firebase_app(settings)  # fails fast at startup on a bad configuration

    async def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise AuthError("missing bearer token: send 'Authorization: Bearer <Firebase ID token>'")
        if len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
            raise AuthError("malformed bearer token: not a Firebase ID token (expected a JWT)")
        # firebase-admin is synchronous (HTTP for certificates and revocation checks): keep it off the loop.
        claims = await asyncio.to_thread(self._verify, token)
        return principal_from_claims(claims, self.admin_claim)

    def _verify(self, token: str) -> dict[str, Any]:
        from firebase_admin import auth

        try:
            claims: dict[str, Any] = auth.verify_id_token(token, app=self._app, check_revoked=self.check_revoked,
                                                          clock_skew_seconds=CLOCK_SKEW_SECONDS)
            return claims
        except auth.ExpiredIdTokenError:
            raise AuthError("expired Firebase ID token: sign in again or refresh it") from None
        except auth.RevokedIdTokenError:
            raise AuthError("revoked Firebase ID token: the user's sessions were revoked, sign in again") from None
        except auth.UserDisabledError:
            raise AuthError("this Firebase user is disabled") from None
        except auth.CertificateFetchError as exc:
            log.error("firebase auth: cannot fetch the token signing certificates: %s", type(exc.cause).__name__)
            raise AuthUnavailable("cannot verify Firebase ID tokens right now, try again shortly") from None
        except auth.InvalidIdTokenError as exc:
            raise AuthError(f"invalid Firebase ID token: {_reason(exc, token)}") from None
        except auth.UserNotFoundError:
            raise AuthError("invalid Firebase ID token: its user no longer exists") from None
        except ValueError as exc:  # firebase-admin's own argument checks (empty token, missing project id)
            log.error("firebase auth misconfigured: %s", _scrub(str(exc), token))
            raise AuthUnavailable("Firebase authentication is not configured on this server") from None
        except Exception as exc:
            # Revocation checks call the Auth backend; its outages must not look like a bad token to the client.
            from firebase_admin import exceptions

            if isinstance(exc, exceptions.FirebaseError):
                log.error("firebase auth: backend error during token check: %s", exc.code)
                raise AuthUnavailable("cannot verify Firebase ID tokens right now, try again shortly") from None
            raise


def principal_from_claims(claims: dict[str, Any], admin_claim: str) -> Principal:
    """uid is the owner; the admin custom claim must be exactly true (not "true", not 1)."""
    uid = claims.get("uid") or claims.get("sub")
    if not isinstance(uid, str) or not uid:
        raise AuthError("invalid Firebase ID token: no uid")
    return Principal(owner=uid, admin=bool(admin_claim) and claims.get(admin_claim) is True)


def _reason(exc: Exception, token: str) -> str:
    """Why the token was refused, in words; google-auth's messages may quote the token, so they are mapped."""
    text = str(exc)
    lowered = text.lower()
    if "segments" in lowered or "can't parse" in lowered or "decode" in lowered or "padding" in lowered:
        return "it is not a well-formed JWT"
    if "signature" in lowered or "certificate for key id" in lowered:
        return "its signature does not verify (it was not issued by this Firebase project)"
    if "too early" in lowered:
        return "it is not valid yet (issued in the future; check the clocks)"
    # firebase-admin's own checks (kid, alg, aud, iss, sub) name the claim, never the token; drop the doc links.
    return _scrub(text.split(" See https://", 1)[0].split(" Make sure", 1)[0].strip(), token)[:200]


def _scrub(text: str, token: str) -> str:
    """Remove the token and each of its parts from a message, in case a library quoted them."""
    for part in sorted({token, *token.split(".")}, key=len, reverse=True):
        if len(part) >= 8:
            text = text.replace(part, "<redacted>")
    return text
