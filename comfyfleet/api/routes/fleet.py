"""The worker fleet and the queue: workers, LoRA checks, queue figures, admin clean-up."""

from __future__ import annotations

import time

from fastapi import APIRouter, Response

from comfyfleet.api.deps import AdminDep, PrincipalDep, StateDep, io
from comfyfleet.api.errors import ApiError
from comfyfleet.api.schemas import (
    LoraAvailability,
    QueueCleanPublic,
    QueueCleanRequest,
    QueueStatsPublic,
    VerifyLoraPublic,
    VerifyLoraRequest,
    WorkerCreate,
    WorkerPublic,
    WorkersPublic,
)
from comfyfleet.api.state import AppState
from comfyfleet.dispatch.registry import endpoint_id_for_url
from comfyfleet.observability.fleet import queue_per_pool

router = APIRouter(tags=["fleet"])


def _workers(state: AppState) -> list[WorkerPublic]:
    registry = state.dispatcher.registry
    endpoints = registry.endpoints()
    leases = registry.leases([e.id for e in endpoints])
    return [
        WorkerPublic(
            id=e.id, url=e.url, pool=e.pool,
            state="unhealthy" if not e.healthy else ("busy" if e.id in leases else "ready"),
            current_job=leases.get(e.id), checkpoints=e.checkpoints, loras=e.loras,
            queue_remaining=e.queue_remaining, last_seen_at=e.last_seen_at, last_error=e.last_error, info=e.info,
        )
        for e in endpoints
    ]


@router.get("/api/comfyui/workers", response_model=WorkersPublic)
async def list_workers(principal: PrincipalDep, state: StateDep) -> WorkersPublic:
    """Every registered ComfyUI worker with its state, current job and models."""
    workers = await io(_workers, state)
    count = {s: sum(1 for w in workers if w.state == s) for s in ("ready", "busy", "unhealthy")}
    return WorkersPublic(workers=workers, **count)


@router.post("/api/comfyui/workers", response_model=WorkerPublic, status_code=201)
async def add_worker(body: WorkerCreate, admin: AdminDep, state: StateDep) -> WorkerPublic:
    """Admin: register a ComfyUI server; it takes jobs once a health probe succeeds."""
    endpoint_id = endpoint_id_for_url(body.url)
    await io(state.dispatcher.registry.upsert, endpoint_id, body.url, body.pool, "api")
    return next(w for w in await io(_workers, state) if w.id == endpoint_id)


@router.delete("/api/comfyui/workers/{worker_id:path}", status_code=204, response_class=Response)
async def remove_worker(worker_id: str, admin: AdminDep, state: StateDep) -> Response:
    """Admin: withdraw a ComfyUI server; a job running on it finishes, no new job is sent to it."""
    if await io(state.dispatcher.registry.get, worker_id) is None:
        raise ApiError(404, f"no worker {worker_id}", details={"field": "workerId"})
    await io(state.dispatcher.registry.remove, worker_id)
    return Response(status_code=204)


@router.post("/api/comfyui/verify-lora", response_model=VerifyLoraPublic)
async def verify_lora(body: VerifyLoraRequest, principal: PrincipalDep, state: StateDep) -> VerifyLoraPublic:
    """Which of the named LoRAs exist on which healthy workers."""
    workers = [w for w in await io(_workers, state)
               if w.state != "unhealthy" and (body.pool is None or w.pool == body.pool)]
    results = [LoraAvailability(name=name, workers=[w.id for w in workers if name in w.loras], available=False)
               for name in body.loras]
    for r in results:
        r.available = bool(r.workers)
    return VerifyLoraPublic(results=results, all_available=all(r.available for r in results))


@router.get("/api/queue/stats", response_model=QueueStatsPublic)
async def queue_stats(principal: PrincipalDep, state: StateDep) -> QueueStatsPublic:
    """Jobs waiting (per priority), active, retrying, and totals by final state."""
    s = await io(state.dispatcher.stats)
    pools = await io(queue_per_pool, state.dispatcher)  # observability: per-pool queue and oldest job
    return QueueStatsPublic(
        waiting=s.waiting, active=s.active, retrying=s.retrying, completed=s.completed, failed=s.failed,
        cancelled=s.cancelled, created=s.created, by_priority={str(p): n for p, n in s.waiting_by_priority.items()},
        by_pool=pools.count, oldest_age_seconds=pools.oldest_age_seconds,
    )


@router.post("/api/queue/clean", response_model=QueueCleanPublic)
async def queue_clean(admin: AdminDep, state: StateDep, body: QueueCleanRequest | None = None) -> QueueCleanPublic:
    """Admin: forget finished jobs (optionally only those older than N seconds)."""
    older = time.time() - body.older_than_seconds if body and body.older_than_seconds is not None else None
    return QueueCleanPublic(removed=await io(state.dispatcher.clean, older))
