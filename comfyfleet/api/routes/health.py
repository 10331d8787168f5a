"""Liveness, readiness detail and Prometheus metrics."""

from __future__ import annotations

from typing import Annotated

import redis
from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from comfyfleet import __version__
from comfyfleet.api.deps import StateDep, io, principal_of
from comfyfleet.api.errors import error_responses
from comfyfleet.api.schemas import HealthDetailedPublic, HealthPublic
from comfyfleet.api.state import AppState

router = APIRouter(tags=["health"])


async def ops_access(request: Request, state: StateDep) -> None:
    """/metrics and /health/detailed: open, or behind bearer auth when protect_ops_routes is on."""
    if state.settings.protect_ops_routes:
        await principal_of(request, state)


OpsAccess = Annotated[None, Depends(ops_access)]


@router.get("/health", response_model=HealthPublic)
async def health() -> HealthPublic:
    """Liveness: the process answers."""
    return HealthPublic(status="ok", version=__version__)


def _detail(state: AppState) -> tuple[int, HealthDetailedPublic]:
    try:
        state.conn.ping()
    except redis.RedisError:  # the error text names Redis' address: not for an open route
        return 503, HealthDetailedPublic(status="down", version=__version__, redis="unreachable", workers={},
                                         queue={})
    candidates = state.dispatcher.registry.candidates()
    workers = {"ready": sum(1 for c in candidates if c.healthy and not c.busy),
               "busy": sum(1 for c in candidates if c.healthy and c.busy),
               "unhealthy": sum(1 for c in candidates if not c.healthy)}
    stats = state.dispatcher.stats()
    status = "ok" if workers["ready"] + workers["busy"] > 0 else "degraded"
    return 200, HealthDetailedPublic(status=status, version=__version__, redis="ok", workers=workers,
                                     queue={"waiting": stats.waiting, "active": stats.active,
                                            "retrying": stats.retrying})


@router.get("/health/detailed", response_model=HealthDetailedPublic,
            responses={**error_responses(401), 503: {"model": HealthDetailedPublic}})
async def health_detailed(state: StateDep, response: Response, _: OpsAccess) -> HealthDetailedPublic:
    """Readiness: Redis reachable, workers by state, queue depth ("degraded" with no healthy worker)."""
    code, body = await io(_detail, state)
    response.status_code = code
    if code == 503:
        response.headers["Retry-After"] = str(state.settings.unavailable_retry_after_seconds)
    return body


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, **error_responses(401)})
async def metrics(request: Request, _: OpsAccess) -> Response:
    """Prometheus metrics."""
    data = await io(generate_latest, request.app.state.metrics.registry)
    return Response(data, media_type=CONTENT_TYPE_LATEST)
