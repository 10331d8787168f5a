"""Liveness, readiness detail and Prometheus metrics."""

from __future__ import annotations

import redis
from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from comfyfleet import __version__
from comfyfleet.api.deps import StateDep, io
from comfyfleet.api.schemas import HealthDetailedPublic, HealthPublic
from comfyfleet.api.state import AppState

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthPublic)
async def health() -> HealthPublic:
    """Liveness: the process answers."""
    return HealthPublic(status="ok", version=__version__)


def _detail(state: AppState) -> tuple[int, HealthDetailedPublic]:
    try:
        state.conn.ping()
    except redis.RedisError as exc:
        return 503, HealthDetailedPublic(status="down", version=__version__, redis=f"error: {exc}", workers={},
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


@router.get("/health/detailed", response_model=HealthDetailedPublic, responses={503: {"model": HealthDetailedPublic}})
async def health_detailed(state: StateDep, response: Response) -> HealthDetailedPublic:
    """Readiness: Redis reachable, workers by state, queue depth ("degraded" with no healthy worker)."""
    code, body = await io(_detail, state)
    response.status_code = code
    return body


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus metrics."""
    data = await io(generate_latest, request.app.state.metrics.registry)
    return Response(data, media_type=CONTENT_TYPE_LATEST)
