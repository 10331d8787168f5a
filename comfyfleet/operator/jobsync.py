"""Pure mapping of a GenerationJob to a comfyfleet Job (spec in) and of the Job record back to status.

A GenerationJob becomes exactly the job the API would make from the same request: the same
template rendering, the same parameter overrides, the same shape checks, the same model and queue.
Only the identity differs: owner `k8s:<namespace>`, source "k8s", and the object's metadata.uid as
the idempotency key, which makes a repeated submission (an operator that crashed between queueing
and writing status, then retried the create handler) return the first job instead of a second one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from comfyfleet.jobs.model import ErrorCode, Job
from comfyfleet.jobs.params import GenerateParams
from comfyfleet.jobs.templates import UnknownTemplate, render_template
from comfyfleet.jobs.validation import DEFAULT_BOUNDS, WorkflowTooLarge, check_bounds, validate_workflow
from comfyfleet.jobs.workflow import ParamError, apply_params
from comfyfleet.operator.jobstatus import InvalidJobSpec, generation_job_params, job_status
from comfyfleet.operator.models import GenerationJobSpec, spec_problem

SOURCE = "k8s"


@dataclass(frozen=True)
class JobDefaults:
    """What the dispatcher settings decide for jobs that do not say (as for API jobs)."""

    max_attempts: int
    timeout_seconds: int


def owner_for(namespace: str) -> str:
    """Owner of the jobs made from GenerationJobs in one namespace (quota and listing key)."""
    return f"{SOURCE}:{namespace}"


def parse_spec(body: Mapping[str, Any]) -> GenerationJobSpec:
    """The GenerationJob spec of a body; InvalidJobSpec with the first problem when it breaks the rules."""
    try:
        return GenerationJobSpec.from_body(body)
    except ValidationError as exc:
        raise InvalidJobSpec(spec_problem(exc)) from None


def build_workflow(spec: GenerationJobSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ComfyUI graph to run and the parameters it was made with, as the API builds them.

    Raises InvalidJobSpec for an unknown template, a parameter the graph cannot take, or a graph
    that is not API-format.
    """
    workflow, template, params = generation_job_params(spec)
    try:  # reliability: the API's bounds, so no GenerationJob stores a record that cannot be read back
        check_bounds(workflow or {}, **DEFAULT_BOUNDS)
    except WorkflowTooLarge as exc:
        raise InvalidJobSpec(f"spec.{exc}") from None
    try:
        given = GenerateParams(**params)
    except ValidationError as exc:
        raise InvalidJobSpec(f"spec.params: {exc.errors()[0]['msg']}") from None
    try:
        if template is not None:
            graph = render_template(template, given)
        else:
            graph = apply_params(workflow or {}, given) if params else dict(workflow or {})
    except UnknownTemplate as exc:
        raise InvalidJobSpec(f"spec.template: {exc}") from None
    except ParamError as exc:
        raise InvalidJobSpec(f"spec.params.{exc.param}: {exc}") from None
    issues = validate_workflow(graph, None)
    if issues:
        raise InvalidJobSpec("spec.workflow: " + "; ".join(_issue_text(i) for i in issues[:5]))
    return graph, params


def _issue_text(issue: Any) -> str:
    where = f"node {issue.node_id}" if issue.node_id else "workflow"
    return f"{where}: {issue.message}"


def build_job(spec: GenerationJobSpec, *, uid: str, namespace: str, defaults: JobDefaults) -> Job:
    """The Job record for a GenerationJob (not yet submitted). Raises InvalidJobSpec."""
    graph, params = build_workflow(spec)
    return Job(
        owner=owner_for(namespace),
        workflow=graph,
        template=spec.template,
        params=params,
        priority=spec.priority,
        pool=spec.pool,
        max_attempts=defaults.max_attempts,
        timeout_seconds=spec.timeout_seconds or defaults.timeout_seconds,
        idempotency_key=uid,
        source=SOURCE,
    )


def output_url(url: str | None, public_url: str) -> str | None:
    """An output's download URL: the store's API path, made absolute when the API's public URL is known."""
    if not url or not public_url or "://" in url:
        return url
    return public_url.rstrip("/") + "/" + url.lstrip("/")


def status_for_job(
    job: Job,
    *,
    now: datetime | float,
    previous: Mapping[str, Any] | None,
    generation: int | None,
    public_url: str = "",
) -> dict[str, Any]:
    """GenerationJob status mirroring the job record: phase, progress, outputs with URLs, error, times."""
    outputs = [
        {"filename": o.filename, "url": output_url(o.url, public_url), "contentType": o.content_type}
        for o in job.outputs
    ]
    error = job.error.model_dump(mode="json", include={"code", "message"}) if job.error else None
    return job_status(
        job.state.value,
        now=now,
        job_id=job.id,
        progress=job.progress.fraction * 100,
        outputs=outputs,
        error=error,
        attempts=job.attempts,
        worker=job.worker,
        start_time=job.started_at,
        completion_time=job.finished_at,
        previous=previous,
        generation=generation,
    )


def lost_job_status(job_id: str, *, now: datetime | float, previous: Mapping[str, Any] | None,
                    generation: int | None) -> dict[str, Any]:
    """Status when the job record is gone from Redis (flushed, or expired long after finishing)."""
    error = {"code": ErrorCode.INTERNAL.value, "message": f"job {job_id} is no longer in the job store"}
    return job_status("failed", now=now, job_id=job_id, error=error, previous=previous, generation=generation)
