"""The worker fleet and the queue: workers, LoRA checks, queue figures, admin clean-up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated
from urllib.parse import urlsplit, urlunsplit

from fastapi import APIRouter, Query, Response

from comfyfleet.api.auth import Principal
from comfyfleet.api.deps import AdminDep, PrincipalDep, StateDep, io
from comfyfleet.api.errors import ApiError, error_responses
from comfyfleet.api.schemas import (
    LoraAvailability,
    QueueCleanPublic,
    QueueCleanRequest,
    QueueStatsPublic,
    UsageDay,
    UsagePublic,
    VerifyLoraPublic,
    VerifyLoraRequest,
    WorkerCreate,
    WorkerPublic,
    WorkersPublic,
)
from comfyfleet.api.state import AppState
from comfyfleet.api.urlpolicy import endpoint_url_problem
from comfyfleet.dispatch.registry import Endpoint, endpoint_id_for_url
from comfyfleet.fairuse.retention import clean_finished
from comfyfleet.observability.fleet import queue_per_pool
from comfyfleet.usage import UsageBook

router = APIRouter(tags=["fleet"], responses=error_responses(401, 403, 404, 409, 413, 422, 503))


def redact_url(url: str) -> str:
    """The URL without credentials (user:password@), for display and logs."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def worker_view(e: Endpoint, job_id: str | None, admin: bool) -> WorkerPublic:
    """What a caller may see of an endpoint: admins its address and errors, users only state and models."""
    state = "unhealthy" if not e.healthy else ("busy" if job_id else "ready")
    return WorkerPublic(
        id="url:" + redact_url(e.id.removeprefix("url:")) if e.id.startswith("url:") else e.id,
        url=redact_url(e.url) if admin else None, pool=e.pool, state=state,
        current_job=job_id if admin else None, checkpoints=e.checkpoints, loras=e.loras,
        queue_remaining=e.queue_remaining, last_seen_at=e.last_seen_at,
        last_error=e.last_error if admin else ("unreachable or failing its health probe" if e.last_error else None),
        info=e.info if admin else {},
    )


def _workers(state: AppState, principal: Principal | None = None) -> list[WorkerPublic]:
    registry = state.dispatcher.registry
    endpoints = registry.endpoints()
    leases = registry.leases([e.id for e in endpoints])
    admin = principal is None or principal.admin
    return [worker_view(e, leases.get(e.id), admin) for e in endpoints]


@router.get("/api/comfyui/workers", response_model=WorkersPublic)
async def list_workers(principal: PrincipalDep, state: StateDep) -> WorkersPublic:
    """Every registered ComfyUI worker with its state and models (addresses and errors for admins only)."""
    workers = await io(_workers, state, principal)
    count = {s: sum(1 for w in workers if w.state == s) for s in ("ready", "busy", "unhealthy")}
    return WorkersPublic(workers=workers, **count)


@router.post("/api/comfyui/workers", response_model=WorkerPublic, status_code=201)
async def add_worker(body: WorkerCreate, admin: AdminDep, state: StateDep) -> WorkerPublic:
    """Admin: register a ComfyUI server; it takes jobs once a health probe succeeds."""
    problem = endpoint_url_problem(body.url)
    if problem:
        raise ApiError(422, f"url: {problem}", details=[{"field": "url", "message": problem}])
    endpoint_id = endpoint_id_for_url(body.url)
    registry = state.dispatcher.registry
    await io(registry.upsert, endpoint_id, body.url, body.pool, "api")
    endpoint = await io(registry.get, endpoint_id)
    if endpoint is None or not endpoint.url:  # withdrawn by another admin between the write and the read-back
        raise ApiError(409, f"worker {endpoint_id} was removed while it was being added",
                       details={"field": "url"})
    leases = await io(registry.leases, [endpoint_id])
    return worker_view(endpoint, leases.get(endpoint_id), admin=True)


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
    workers = [w for w in await io(_workers, state, principal)
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
    """Admin: forget finished jobs and delete their files (optionally only those finished over N seconds ago)."""
    older = (datetime.now(UTC) - timedelta(seconds=body.older_than_seconds)
             if body and body.older_than_seconds is not None else None)
    return QueueCleanPublic(removed=await io(clean_finished, state.dispatcher, state.store, older))


@router.get("/api/comfyui/usage", response_model=UsagePublic, tags=["usage"])
async def usage(principal: PrincipalDep, state: StateDep,
                user: Annotated[str | None, Query(min_length=1, max_length=128, description="admins only")] = None,
                days: Annotated[int, Query(ge=1, le=366, description="how many UTC days, ending today")] = 7,
                ) -> UsagePublic:
    """GPU-seconds used per UTC day by the caller's jobs (admins may name any user)."""
    owner = principal.owner
    if user is not None and user != principal.owner:
        if not principal.admin:
            raise ApiError(403, "only admins may read another user's usage", details={"field": "user"})
        owner = user
    book = UsageBook(state.conn, state.dispatcher.keys, state.settings.usage_retention_days)
    rows = await io(book.days, owner, datetime.now(UTC).date(), days)
    return UsagePublic(user=owner, days=[UsageDay(**r) for r in rows],
                       total_gpu_seconds=round(sum(r["gpu_seconds"] for r in rows), 3))
