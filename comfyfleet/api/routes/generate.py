"""Create jobs: asynchronously (202 + jobId) or synchronously (wait for the result)."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response

from comfyfleet.api.auth import Principal
from comfyfleet.api.deps import PrincipalDep, StateDep, io
from comfyfleet.api.errors import ApiError
from comfyfleet.api.events import wait_until_final
from comfyfleet.api.integrations import FieldError, job_integrations
from comfyfleet.api.schemas import JobCreate, JobPublic
from comfyfleet.api.state import AppState
from comfyfleet.jobs.model import ErrorCode, Job, JobState
from comfyfleet.jobs.templates import UnknownTemplate, render_template
from comfyfleet.jobs.validation import validate_workflow
from comfyfleet.jobs.workflow import ParamError, apply_params

router = APIRouter(prefix="/api/comfyui", tags=["generate"])

IdempotencyHeader = Annotated[str | None, Header(alias="Idempotency-Key", max_length=128)]


def _catalog(state: AppState, pool: str | None) -> dict[str, Any] | None:
    """Node catalog of the ready workers (union), or None when no ready worker has reported one yet."""
    registry = state.dispatcher.registry
    merged: dict[str, Any] = {}
    for endpoint in registry.endpoints():
        if endpoint.healthy and (pool is None or endpoint.pool == pool):
            catalog = registry.catalog(endpoint.id)
            if catalog:
                merged = {**catalog, **merged}
    return merged or None


async def build_job(state: AppState, body: JobCreate, principal: Principal, idempotency_key: str | None) -> Job:
    try:
        if body.template is not None:
            workflow = render_template(body.template, body.params)
        else:
            workflow = apply_params(body.workflow or {}, body.params) if body.params.given() else body.workflow
    except UnknownTemplate as exc:
        raise ApiError(422, str(exc), details=[{"field": "template", "message": str(exc)}]) from None
    except ParamError as exc:
        raise ApiError(422, str(exc), details=[{"field": f"params.{exc.param}", "message": str(exc)}]) from None
    try:  # HOOK(integrations): images by URL or data URL, webhook and output options
        images, extras = await job_integrations(state.settings, body, principal.owner)
    except FieldError as exc:
        raise ApiError(422, str(exc), details=[{"field": exc.field, "message": exc.message}]) from None
    catalog = await io(state.cached_catalog, body.pool, lambda: _catalog(state, body.pool))
    issues = validate_workflow(workflow or {}, catalog, frozenset(images))
    if issues:
        raise ApiError(
            422,
            "invalid workflow: " + "; ".join(
                f"node {i.node_id} ({i.class_type})" + (f" input {i.input_name}" if i.input_name else "")
                + f": {i.message}" for i in issues[:10]),
            code="invalid_workflow",
            details={"field": "workflow", "nodeErrors": [i.as_dict() for i in issues]},
        )
    settings = state.settings
    job = Job(
        owner=principal.owner, workflow=workflow or {}, template=body.template,
        params=body.params.given(), priority=body.priority, pool=body.pool,
        max_attempts=settings.max_attempts, timeout_seconds=body.timeout_seconds or settings.job_timeout_seconds,
        idempotency_key=body.idempotency_key or idempotency_key, source="api", **extras,
    )
    if images:
        job.inputs = [await io(state.store.put_input, job, name, data) for name, data in images.items()]
    return job


@router.post("/generate", response_model=JobPublic, status_code=202)
async def generate(body: JobCreate, principal: PrincipalDep, state: StateDep, response: Response,
                   idempotency_key: IdempotencyHeader = None) -> JobPublic:
    """Queue a generation and return at once with its jobId (202)."""
    job = await build_job(state, body, principal, idempotency_key)
    job, created = await io(state.dispatcher.submit, job)
    if not created:
        response.status_code = 200
    response.headers["Location"] = f"/api/comfyui/job/{job.id}"
    return state.public(job)  # browser: with its access token


@router.post("/generate/sync", response_model=JobPublic, responses={504: {"description": "still running"}})
async def generate_sync(body: JobCreate, principal: PrincipalDep, state: StateDep,
                        timeout: Annotated[float | None, Query(gt=0, le=3600)] = None,
                        idempotency_key: IdempotencyHeader = None) -> JobPublic:
    """Queue a generation and wait for its result; 504 with the jobId if it takes longer than the timeout."""
    job = await build_job(state, body, principal, idempotency_key)
    wait = timeout or state.settings.sync_timeout_seconds
    started = time.monotonic()
    async with state.hub.follow(job.id) as feed:  # browser: the process's shared event subscription
        job, _ = await io(state.dispatcher.submit, job)
        current = await io(state.dispatcher.repo.require, job.id)
        job = await wait_until_final(feed, current, wait - (time.monotonic() - started))
    if not job.state.is_terminal:
        raise ApiError(504, f"the job is still {job.state.value} after {wait:g} s; poll /api/comfyui/job/{job.id}",
                       code="timeout", details={"jobId": job.id, "state": job.state.value})
    if job.state is JobState.FAILED and job.error and job.error.code is ErrorCode.VALIDATION:
        raise ApiError(422, job.error.message, code="invalid_workflow",
                       details={"field": "workflow", "jobId": job.id, **(job.error.details or {})})
    return state.public(job)  # browser: with its access token
