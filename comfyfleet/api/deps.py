"""FastAPI dependencies, as Annotated aliases routes declare."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request

from comfyfleet.api.auth import AuthError, AuthUnavailable, Principal
from comfyfleet.api.errors import ApiError
from comfyfleet.api.state import AppState

T = TypeVar("T")


def get_state(request: Request) -> AppState:
    return request.app.state.cf


StateDep = Annotated[AppState, Depends(get_state)]


async def get_principal(request: Request, state: StateDep) -> Principal:
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
