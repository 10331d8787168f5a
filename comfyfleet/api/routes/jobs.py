"""Read, follow and cancel jobs; list a user's history; download outputs."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Query, Response
from fastapi.responses import StreamingResponse

from comfyfleet.api.auth import Principal
from comfyfleet.api.deps import PrincipalDep, StateDep, io
from comfyfleet.api.errors import ApiError, error_responses
from comfyfleet.api.events import job_feed
from comfyfleet.api.schemas import JobPublic, JobsPublic
from comfyfleet.api.state import AppState
from comfyfleet.jobs.model import Job
from comfyfleet.jobs.states import InvalidTransition
from comfyfleet.store.history import job_history
from comfyfleet.store.jobrepo import JobNotFound
from comfyfleet.store.outputs import StorageError

router = APIRouter(prefix="/api/comfyui", tags=["jobs"],
                   responses=error_responses(401, 403, 404, 409, 413, 422, 503))  # reliability: documented errors

# SSE comment lines keep proxies from closing an idle stream while a job waits in the queue.
KEEPALIVE_SECONDS = 15.0


async def load_job(state: AppState, job_id: str, principal: Principal) -> Job:
    """The job if the caller may see it; others' jobs are 404, as if they did not exist."""
    job = await io(state.dispatcher.repo.get, job_id)
    if job is None or (job.owner != principal.owner and not principal.admin):
        raise ApiError(404, f"no job {job_id}", details={"field": "jobId"})
    return job


@router.get("/job/{job_id}", response_model=JobPublic)
async def get_job(job_id: str, principal: PrincipalDep, state: StateDep) -> JobPublic:
    """A job's state, progress, error and outputs."""
    return JobPublic.of(await load_job(state, job_id, principal))


@router.delete("/job/{job_id}", response_model=JobPublic)
async def cancel_job(job_id: str, principal: PrincipalDep, state: StateDep) -> JobPublic:
    """Cancel a job: a queued job never runs; a running one is interrupted on its worker."""
    await load_job(state, job_id, principal)
    try:
        job = await io(state.dispatcher.cancel, job_id)
    except InvalidTransition as exc:
        raise ApiError(409, f"the job already finished ({exc.current.value}) and cannot be cancelled",
                       details={"state": exc.current.value}) from None
    except JobNotFound:
        raise ApiError(404, f"no job {job_id}") from None
    return JobPublic.of(job)


def _sse(event: str, job: Job) -> bytes:
    data = JobPublic.of(job).model_dump(mode="json", by_alias=True)
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


@router.get("/job/{job_id}/events", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}})
async def job_events(job_id: str, principal: PrincipalDep, state: StateDep) -> StreamingResponse:
    """Server-Sent Events: the job now, then every state and progress change until it is final."""
    await load_job(state, job_id, principal)

    async def stream() -> AsyncIterator[bytes]:
        async with job_feed(state.aconn, state.dispatcher.keys, job_id) as feed:
            job = await io(state.dispatcher.repo.require, job_id)
            yield _sse("state", job)
            while not job.state.is_terminal:
                item = await feed.next(KEEPALIVE_SECONDS)
                if item is None:
                    yield b": keepalive\n\n"
                    continue
                event, job = item
                yield _sse(event, job)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/jobs", response_model=JobsPublic)
async def list_jobs(principal: PrincipalDep, state: StateDep,
                    limit: Annotated[int, Query(ge=1, le=100)] = 20,
                    before: Annotated[float | None, Query(description="createdAt timestamp cursor")] = None,
                    user: Annotated[str | None, Query(max_length=128, description="admins only")] = None,
                    ) -> JobsPublic:
    """The caller's jobs, newest first (admins may name another user)."""
    if before is not None and not math.isfinite(before):  # reliability: nan/inf reached Redis as a 500
        raise ApiError(422, "before: must be a finite timestamp", details=[{"field": "before", "message": "finite"}])
    owner = principal.owner
    if user is not None and user != principal.owner:
        if not principal.admin:
            raise ApiError(403, "only admins may list another user's jobs", details={"field": "user"})
        owner = user
    page = await io(job_history(state.settings, state.dispatcher.repo).page, owner, limit, before)
    return JobsPublic(jobs=[JobPublic.of(j) for j in page.jobs], next_before=page.next_before)


@router.get("/outputs/{job_id}/{filename}", response_class=Response,
            responses={200: {"content": {"image/png": {}}}})
async def get_output(job_id: str, filename: str, principal: PrincipalDep, state: StateDep) -> Response:
    """Download one output file of a job."""
    job = await load_job(state, job_id, principal)
    # reliability: a name that is no file name ('.', '..', a backslash) is simply not one of the outputs
    output = next((o for o in job.outputs if o.filename == filename), None)
    if output is None:
        raise ApiError(404, f"job {job_id} has no output {filename[:200]!r}", details={"field": "filename"})
    try:
        data = await io(state.store.read, output.key)
    except StorageError:  # its message names server paths: say what is missing, not where
        raise ApiError(404, f"output {output.filename!r} of job {job_id} is no longer stored",
                       details={"field": "filename"}) from None
    return Response(data, media_type=output.content_type,
                    headers={"Content-Disposition": content_disposition(output.filename)})


def content_disposition(name: str) -> str:
    """`inline` with an ASCII fallback name and the exact UTF-8 name (RFC 6266 / 5987), never raw quotes."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name) or "output"
    return f"inline; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"
