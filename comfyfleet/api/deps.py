"""FastAPI dependencies, as Annotated aliases routes declare."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from comfyfleet.api.auth import AuthError, AuthUnavailable, Principal
from comfyfleet.api.errors import ApiError
from comfyfleet.api.state import AppState

T = TypeVar("T")


async def get_state(request: Request) -> AppState:
    # async: FastAPI runs a plain `def` dependency in its thread pool, a thread hop on every request
    state: AppState = request.app.state.cf
    return state


StateDep = Annotated[AppState, Depends(get_state)]


# Declares the bearer scheme in the OpenAPI schema; the header is parsed below for our own error bodies.
bearer_scheme = HTTPBearer(auto_error=False, description="a static API token or a Firebase ID token")


def served_on_loopback(request: HTTPConnection) -> bool:
    """Whether this request arrived on a loopback socket (the address the server actually bound, per connection)."""
    server = request.scope.get("server")
    if not server:
        return False  # unknown transport (a Unix socket behind a proxy): not provably local
    return is_loopback_host(str(server[0]))


@functools.lru_cache(maxsize=64)  # a server binds a handful of addresses; parsing one costs more than the route
def is_loopback_host(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return host == "localhost"


async def get_principal(request: Request,
                        _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)] = None,
                        ) -> Principal:
    # The state straight from the app, not as a sub-dependency: FastAPI's solving costs per level, per request.
    return await principal_of(request, request.app.state.cf)


async def principal_of(request: HTTPConnection, state: AppState) -> Principal:
    """The caller of a request (routes that authenticate by hand call this; the rest use PrincipalDep)."""
    if state.settings.auth_mode == "none" and not served_on_loopback(request):
        # Settings refuse a non-loopback COMFYFLEET_HOST, but create_app may be served by any server on
        # any socket: check the socket this request came in on.
        raise ApiError(403, "auth is off (COMFYFLEET_AUTH_MODE=none): only loopback connections are served")
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if header and scheme.lower() != "bearer":
        raise ApiError(401, "the Authorization header must be 'Bearer <token>'", headers={"WWW-Authenticate": "Bearer"})
    try:
        return await state.authenticator.authenticate(token.strip() or None)
    except AuthUnavailable as exc:
        raise ApiError(503, str(exc), headers={"Retry-After": "5"}) from None
    except AuthError as exc:
        raise ApiError(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def get_admin(principal: PrincipalDep) -> Principal:
    if not principal.admin:
        raise ApiError(403, "this route is for admins")
    return principal


AdminDep = Annotated[Principal, Depends(get_admin)]


async def io(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking Redis/file call off the event loop."""
    return await asyncio.to_thread(fn, *args, **kwargs)
