"""Read, follow and cancel jobs; list a user's history; download outputs."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.requests import HTTPConnection

from comfyfleet.api.auth import Principal
from comfyfleet.api.deps import PrincipalDep, StateDep, io, principal_of
from comfyfleet.api.errors import ApiError, error_responses
from comfyfleet.api.events import EventStreamResponse, follow_job, parse_last_event_id, sse_frame
from comfyfleet.api.schemas import JobPublic, JobsPublic
from comfyfleet.api.state import AppState
from comfyfleet.api.tokens import TokenError
from comfyfleet.jobs.model import Job
from comfyfleet.jobs.states import InvalidTransition
from comfyfleet.store.history import job_history
from comfyfleet.store.jobrepo import JobNotFound
from comfyfleet.store.outputs import StorageError

router = APIRouter(prefix="/api/comfyui", tags=["jobs"],
                   responses=error_responses(401, 403, 404, 409, 413, 422, 503))  # reliability: documented errors


async def require_job(state: AppState, job_id: str) -> Job:
    job = await state.read_job(job_id)
    if job is None:
        raise JobNotFound(job_id)
    return job


async def load_job(state: AppState, job_id: str, principal: Principal) -> Job:
    """The job if the caller may see it; others' jobs are 404, as if they did not exist."""
    job = await state.read_job(job_id)
    if job is None or (job.owner != principal.owner and not principal.admin):
        raise ApiError(404, f"no job {job_id}", details={"field": "jobId"})
    return job


@router.get("/job/{job_id}", response_model=JobPublic)
async def get_job(job_id: str, principal: PrincipalDep, state: StateDep) -> JobPublic:
    """A job's state, progress, error and outputs."""
    return state.public(await load_job(state, job_id, principal))


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
    return state.public(job)


async def stream_job(state: AppState, job_id: str, request: HTTPConnection, token: str | None) -> tuple[Job, str]:
    """The job and on whose behalf it is read: by the bearer header if one is sent, else the access token.

    A caller who names itself is judged as itself (another user's token URL gets it a 404). A token only
    ever opens the job it was made for; it never reaches the authenticator, so an ID token or API token
    put in a URL is refused like any wrong token.
    """
    if token is None or request.headers.get("authorization"):
        principal = await principal_of(request, state)
        return await load_job(state, job_id, principal), principal.owner
    job = await state.read_job(job_id)
    if job is None:
        raise ApiError(401, "the access token is not valid for this job", details={"field": "token"})
    try:
        state.tokens.check(token, job.id, job.owner, time.time())
    except TokenError as exc:
        raise ApiError(401, str(exc), details={"field": "token"}) from None
    return job, job.owner


TokenQuery = Annotated[str | None, Query(max_length=200, description="the job's accessToken (for browsers)")]
LastEventIdQuery = Annotated[str | None, Query(alias="lastEventId", max_length=40,
                                               description="resume after this event id (as Last-Event-ID)")]


@router.get("/job/{job_id}/events", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}, 429: {"description": "too many open streams"}})
async def job_events(job_id: str, request: Request, state: StateDep, token: TokenQuery = None,
                     last_event_id: LastEventIdQuery = None,
                     last_event_header: Annotated[str | None, Header(alias="Last-Event-ID", max_length=40)] = None,
                     ) -> StreamingResponse:
    """Server-Sent Events: the job now, then every state and progress change until it is final.

    Each event has an id; reconnect with Last-Event-ID (EventSource does) or ?lastEventId= to get the
    events missed meanwhile, from any API replica.
    """
    job, owner = await stream_job(state, job_id, request, token)
    after = parse_last_event_id(last_event_header or last_event_id,
                                "Last-Event-ID" if last_event_header else "lastEventId")
    release = state.streams.acquire(owner)

    async def read_job() -> Job:
        return await require_job(state, job.id)

    async def frames() -> AsyncIterator[bytes]:
        async for item in follow_job(state.hub, job.id, read_job, after, state.settings.max_stream_seconds):
            data = None if item is None else state.public(item.job).model_dump(mode="json", by_alias=True)
            yield sse_frame(item, data or {})

    return EventStreamResponse(frames(), release)


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
    return JobsPublic(jobs=[state.public(j) for j in page.jobs], next_before=page.next_before)


@router.get("/outputs/{job_id}/{filename}", response_class=Response,
            responses={200: {"content": {"image/png": {}}}})
async def get_output(job_id: str, filename: str, request: Request, state: StateDep,
                     token: TokenQuery = None) -> Response:
    """Download one output file of a job (bearer header, or the job's accessToken as ?token=)."""
    job, _ = await stream_job(state, job_id, request, token)
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
