"""Create jobs: asynchronously (202 + jobId) or synchronously (wait for the result)."""

from __future__ import annotations

import asyncio
import logging
import time
import unicodedata
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response

from comfyfleet.api.auth import Principal
from comfyfleet.api.deps import PrincipalDep, StateDep, io
from comfyfleet.api.errors import ApiError, error_responses
from comfyfleet.api.events import wait_until_final
from comfyfleet.api.integrations import FieldError, job_integrations
from comfyfleet.api.schemas import JobCreate, JobPublic
from comfyfleet.api.state import AppState
from comfyfleet.fairuse.limits import FairUse, LimitExceeded
from comfyfleet.fairuse.pools import known_pools
from comfyfleet.jobs.model import ErrorCode, Job, JobState
from comfyfleet.jobs.templates import UnknownTemplate, render_template
from comfyfleet.jobs.validation import WorkflowRefused, check_bounds, merge_catalogs, validate_workflow
from comfyfleet.jobs.workflow import NodeIssue, ParamError, Slot, apply_params, check_shape
from comfyfleet.keys import as_text
from comfyfleet.store.outputs import StorageError

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/comfyui", tags=["generate"],
                   responses=error_responses(401, 403, 404, 409, 413, 422, 429, 503))
GENERATE_PATH = f"{router.prefix}/generate"  # the route `generate` below

# The header's bounds; the front door's fast path checks them too, before it hands a request to FastAPI.
IDEMPOTENCY_KEY_MAX = 128
IdempotencyHeader = Annotated[str | None, Header(alias="Idempotency-Key", min_length=1,
                                                 max_length=IDEMPOTENCY_KEY_MAX)]
# Input image names end up as file names on the pod: short, printable, no path parts.
MAX_IMAGE_NAME = 128


def _catalog(state: AppState, pool: str | None) -> dict[str, Any] | None:
    """Node catalog of the ready endpoints (node types and COMBO options united), or None if none reported one."""
    registry = state.dispatcher.registry
    catalogs = [c for e in registry.endpoints() if e.healthy and (pool is None or e.pool == pool)
                if (c := registry.catalog(e.id))]
    return merge_catalogs(catalogs) or None


async def catalog_for(state: AppState, pool: str | None) -> dict[str, Any] | None:
    """The cached catalog without leaving the event loop; read in a thread only when it is not cached, once for
    all the requests that find it missing meanwhile (each reading its own copy, up to one per open connection,
    parsed the ~1 MB of a real catalog in parallel every time the cache expired: a latency spike under load)."""
    hit = state.cached_catalog_hit(pool)
    if hit is not None:
        return hit
    loading = state.catalog_loads.get(pool)
    if loading is None:
        loading = asyncio.ensure_future(io(state.cached_catalog, pool, lambda: _catalog(state, pool)))
        state.catalog_loads[pool] = loading
        loading.add_done_callback(lambda _: state.catalog_loads.pop(pool, None))
    return await asyncio.shield(loading)  # one waiter's cancellation leaves the read to the others


async def check_pool(state: AppState, pool: str) -> None:
    """Refuse a pool nobody serves or declares (422). A pool seen recently is accepted from memory; an unseen
    one is looked up every time, so a pool the operator just declared is never refused."""
    if state.pool_recently_known(pool):
        return
    pools = await io(known_pools, state.dispatcher)
    state.remember_pools(pools)
    if pool not in pools:
        raise ApiError(422, f"pool: no pool named {pool!r} (known: {', '.join(sorted(pools)) or 'none'})",
                       details=[{"field": "pool", "message": "unknown pool", "known": sorted(pools)}])


def _invalid(field: str, message: str, code: str = "validation_error") -> ApiError:
    return ApiError(422, f"{field}: {message}", code=code, details=[{"field": field, "message": message}])


def _node_issues(issues: list[NodeIssue]) -> ApiError:
    return ApiError(
        422,
        "invalid workflow: " + "; ".join(
            f"node {i.node_id} ({i.class_type})" + (f" input {i.input_name}" if i.input_name else "")
            + f": {i.message}" for i in issues[:10]),
        code="invalid_workflow",
        details={"field": "workflow", "nodeErrors": [i.as_dict() for i in issues]},
    )


@dataclass
class Submission:
    """A validated request: either the job to create (with its images) or the job an idempotent repeat names."""

    job: Job
    images: dict[str, bytes] = field(default_factory=dict)
    existing: bool = False


async def _existing_job(state: AppState, owner: str, key: str) -> Job | None:
    """The job this user already created with this idempotency key, if it is still on record."""
    job_id = await state.aconn.get(state.dispatcher.keys.idempotency(owner, key))
    if not job_id:
        return None
    job = await state.read_job(as_text(job_id))
    return job if job is not None and job.owner == owner else None


async def prepare(state: AppState, body: JobCreate, principal: Principal, idempotency_key: str | None) -> Submission:
    """Validate everything that needs no write; an idempotent repeat is answered here, before any upload."""
    settings = state.settings
    key = body.idempotency_key or idempotency_key
    if key is not None:
        existing = await _existing_job(state, principal.owner, key)
        if existing is not None:
            return Submission(job=existing, existing=True)
    if body.workflow is not None:
        try:  # before anything walks the graph: a value nested thousands deep must not reach a recursive copy
            check_bounds(body.workflow, max_depth=settings.max_workflow_depth,
                         max_nodes=settings.max_workflow_nodes, max_bytes=settings.max_workflow_bytes)
        except WorkflowRefused as exc:
            raise _invalid(exc.field, str(exc).split(": ", 1)[-1], code=exc.code) from None
    given = body.params.given()
    written: list[Slot] = []
    workflow = _render(body, given, written)
    check_image_names(body.input_images)
    try:  # HOOK(integrations): images by URL or data URL, webhook and output options
        images, extras = await job_integrations(state.settings, body, principal.owner)
    except FieldError as exc:
        raise ApiError(422, str(exc), details=[{"field": exc.field, "message": exc.message}]) from None
    if body.pool is not None:
        await check_pool(state, body.pool)
    catalog = await catalog_for(state, body.pool)
    if body.template is not None and not images:
        issues = state.template_checks.validate(body.pool, body.template, tuple(given), workflow, written, catalog)
    else:
        issues = validate_workflow(workflow, catalog, frozenset(images), strict_files=False)
    if issues:
        raise _node_issues(issues)
    job = Job(
        owner=principal.owner, workflow=workflow, template=body.template,
        params=given, priority=body.priority, pool=body.pool,
        max_attempts=settings.max_attempts, timeout_seconds=body.timeout_seconds or settings.job_timeout_seconds,
        queue_timeout_seconds=body.queue_timeout_seconds or settings.queue_timeout_seconds,
        idempotency_key=key, source="api", **extras,
    )
    return Submission(job=job, images=images)


def _render(body: JobCreate, given: dict[str, object], written: list[Slot]) -> dict[str, Any]:
    try:
        if body.template is not None:
            return render_template(body.template, body.params, written)
        workflow = body.workflow or {}
        if given:
            # Parameters are written into nodes: the graph must have the right shape first.
            shape = check_shape(workflow)
            if shape:
                raise _node_issues(shape)
            return apply_params(workflow, body.params)
        return workflow
    except UnknownTemplate as exc:
        raise _invalid("template", str(exc)) from None
    except ParamError as exc:
        raise _invalid(f"params.{exc.param}", str(exc)) from None


async def commit(state: AppState, sub: Submission) -> tuple[Job, bool]:
    """Reserve the job's place under the fair-use limits, store its inputs, then create and queue it.

    On the event loop's own Redis client. Without images all of it is one atomic script call; with images the
    reservation comes first (a refused request uploads nothing), then the inputs, then the job."""
    job, limits, aconn = sub.job, state.fair_use, state.aconn
    try:
        if not sub.images:
            job, created = await state.dispatcher.submit_async(state.batch, job, limits)
        else:
            await limits.admit_async(aconn, job)
            try:
                job.inputs = [await io(state.store.put_input, job, name, data) for name, data in sub.images.items()]
                job, created = await state.dispatcher.submit_async(aconn, job)
            except BaseException:
                await _undo(state, limits, sub.job)
                raise
            if not created:  # a concurrent request with the same key won: drop this one's reservation and files
                await _undo(state, limits, sub.job)
    except LimitExceeded as exc:
        raise ApiError(429, str(exc), code="rate_limited",
                       details={"limit": exc.limit, "value": exc.value, "retryAfter": exc.retry_after},
                       headers={"Retry-After": str(exc.retry_after)}) from None
    if not created and job.owner != sub.job.owner:  # never hand out another user's job, whatever the key layout
        log.error("idempotency key of %s resolved to a job of %s: refused", sub.job.owner, job.owner)
        raise ApiError(409, "idempotencyKey: this key cannot be used; choose another",
                       details=[{"field": "idempotencyKey", "message": "key conflict"}])
    return job, created


async def _undo(state: AppState, limits: FairUse, job: Job) -> None:
    try:
        await limits.release_async(state.aconn, job)
        if job.inputs:
            await io(state.store.delete_job, job)
    except (StorageError, OSError) as exc:
        log.warning("job %s: could not remove inputs of a job that was not created: %s", job.id, exc)


def image_name_problem(name: str) -> str | None:
    """Why an input image name is refused (pure); None if it is a plain, printable file name."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        return "plain file name required"
    if len(name) > MAX_IMAGE_NAME:
        return f"at most {MAX_IMAGE_NAME} characters"
    if any(unicodedata.category(c).startswith("C") for c in name):
        return "control characters are not allowed"
    return None


def check_image_names(encoded: dict[str, str]) -> None:
    """Refuse image names with paths or control characters (a NUL reached the store as a 500) before any fetch."""
    for name in encoded:
        problem = image_name_problem(name)
        if problem:
            # A refused name is shown escaped and cut short: it may hold control characters or be huge.
            field_name = f"inputImages.{name[:MAX_IMAGE_NAME]!r}"
            raise ApiError(422, f"{field_name}: image names must be plain file names ({problem})",
                           details=[{"field": field_name, "message": problem}])


async def queue_generation(state: AppState, body: JobCreate, principal: Principal,
                           idempotency_key: str | None) -> tuple[Job, bool]:
    """What POST /generate does once its request is read: (the job, created); the caller answers with its
    public view. An idempotent repeat is (the first job, False). Both the route below and the front door's fast
    path (api/frontdoor.py) call it."""
    sub = await prepare(state, body, principal, idempotency_key)
    if sub.existing:
        return sub.job, False
    return await commit(state, sub)


def job_location(job_id: str) -> str:
    """The Location header of a queued job."""
    return f"/api/comfyui/job/{job_id}"


@router.post("/generate", response_model=JobPublic, status_code=202,
             responses={200: {"model": JobPublic, "description": "an idempotent repeat: the first job"}})
async def generate(body: JobCreate, principal: PrincipalDep, request: Request, response: Response,
                   idempotency_key: IdempotencyHeader = None) -> JobPublic:
    """Queue a generation and return at once with its jobId (202)."""
    # Served by the front door's fast path (api/frontdoor.py) unless a request needs FastAPI's own handling.
    state: AppState = request.app.state.cf  # not StateDep: each dependency level costs FastAPI time per request
    job, created = await queue_generation(state, body, principal, idempotency_key)
    if not created:
        response.status_code = 200
    response.headers["Location"] = job_location(job.id)
    return state.public(job)  # browser: with its access token


@router.post("/generate/sync", response_model=JobPublic, responses=error_responses(504))
async def generate_sync(body: JobCreate, principal: PrincipalDep, state: StateDep,
                        timeout: Annotated[float | None, Query(gt=0, le=3600)] = None,
                        idempotency_key: IdempotencyHeader = None) -> JobPublic:
    """Queue a generation and wait for its result; 504 with the jobId if it takes longer than the timeout."""
    sub = await prepare(state, body, principal, idempotency_key)
    wait = timeout or state.settings.sync_timeout_seconds
    started = time.monotonic()
    async with state.hub.follow(sub.job.id) as feed:  # browser: the process's shared event subscription
        if sub.existing:
            job = sub.job
        else:
            job, _ = await commit(state, sub)
        if job.id != sub.job.id:  # a concurrent repeat won; follow that job instead
            async with state.hub.follow(job.id) as other:
                current = await io(state.dispatcher.repo.require, job.id)
                job = await wait_until_final(other, current, wait - (time.monotonic() - started))
        else:
            current = await io(state.dispatcher.repo.require, job.id)
            job = await wait_until_final(feed, current, wait - (time.monotonic() - started))
    if not job.state.is_terminal:
        raise ApiError(504, f"the job is still {job.state.value} after {wait:g} s; poll /api/comfyui/job/{job.id}",
                       code="timeout", details={"jobId": job.id, "state": job.state.value})
    if job.state is JobState.FAILED and job.error and job.error.code is ErrorCode.VALIDATION:
        raise ApiError(422, job.error.message, code="invalid_workflow",
                       details={"field": "workflow", "jobId": job.id, **(job.error.details or {})})
    return state.public(job)  # browser: with its access token
