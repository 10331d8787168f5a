"""Pure mapping of a GenerationJob spec to the comfyfleet Job it is queued as (spec in).

A GenerationJob becomes exactly the job the API would make from the same request: the same
template rendering, the same parameter overrides, the same shape checks, the same model and queue.
Only the identity differs: owner `k8s:<namespace>`, source "k8s", and the object's metadata.uid as
the idempotency key, which makes a repeated submission (an operator that crashed between queueing
and writing status, then retried the create handler) return the first job instead of a second one.
The way back, a Job record to GenerationJob status, is `job_status`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from comfyfleet.jobs.model import Job
from comfyfleet.jobs.params import GenerateParams
from comfyfleet.jobs.templates import UnknownTemplate, render_template
from comfyfleet.jobs.validation import DEFAULT_BOUNDS, WorkflowRefused, check_bounds
from comfyfleet.jobs.workflow import NodeIssue, ParamError, apply_params, check_shape
from comfyfleet.operator.models import GenerationJobSpec, spec_problem

SOURCE = "k8s"
# At most this many graph problems are listed in status and the event (the rest are more of the same).
MAX_ISSUES_SHOWN = 5


class InvalidJobSpec(ValueError):
    """A GenerationJob spec the operator cannot run (the handler marks it Failed, permanently)."""


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


def spec_params(spec: GenerationJobSpec) -> dict[str, Any]:
    """The parameters the spec sets, with `GenerateParams`' snake_case names; empty when it sets none."""
    return spec.params.model_dump(exclude_none=True) if spec.params else {}


def build_workflow(spec: GenerationJobSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ComfyUI graph to run and the parameters it was made with, as the API builds them.

    Raises InvalidJobSpec for an unknown template, a parameter the graph cannot take, or a graph
    that is not API-format (`check_shape`, the API's own structural check).
    """
    params = spec_params(spec)
    try:  # reliability: the API's bounds, so no GenerationJob stores a record that cannot be read back
        check_bounds(spec.workflow or {}, **DEFAULT_BOUNDS)
    except WorkflowRefused as exc:
        raise InvalidJobSpec(f"spec.{exc}") from None
    if spec.workflow is not None:
        _require_shape(spec.workflow)  # before apply_params, which expects API-format nodes
    try:
        given = GenerateParams(**params)
    except ValidationError as exc:
        raise InvalidJobSpec(f"spec.params: {exc.errors()[0]['msg']}") from None
    try:
        if spec.workflow is not None:
            graph = apply_params(spec.workflow, given) if params else dict(spec.workflow)
        else:
            graph = render_template(spec.template or "", given)
            _require_shape(graph)
    except UnknownTemplate as exc:
        raise InvalidJobSpec(f"spec.template: {exc}") from None
    except ParamError as exc:
        raise InvalidJobSpec(f"spec.params.{exc.param}: {exc}") from None
    return graph, params


def _require_shape(graph: dict[str, Any]) -> None:
    issues = check_shape(graph)
    if issues:
        raise InvalidJobSpec("spec.workflow: " + "; ".join(_issue_text(i) for i in issues[:MAX_ISSUES_SHOWN]))


def _issue_text(issue: NodeIssue) -> str:
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
