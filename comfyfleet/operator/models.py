"""Pydantic models of the ComfyUIWorker and GenerationJob custom resources (spec and status).

The CRD YAML under `crds/` is the source of truth; these models mirror it field by field with the
same camelCase names (aliases) and the same defaults. `tests/unit/test_crds.py` walks every schema
property against these models (and back), so a field added to one side only fails the tests.

Unknown fields are ignored rather than rejected: the apiserver already prunes anything the schema
does not know, and an operator one release behind its CRD must still read newer objects.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator
from pydantic.alias_generators import to_camel

from comfyfleet.jobs.params import GenerateParams

GROUP = "comfyfleet.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
# kopf keeps its progress and last-handled spec in annotations under this prefix (operator/main.py); the
# last-handled one appears once a create handler is recorded done.
ANNOTATION_PREFIX = GROUP
CREATE_RECORDED_ANNOTATION = f"{ANNOTATION_PREFIX}/last-handled-configuration"
WORKER_KIND = "ComfyUIWorker"
WORKER_PLURAL = "comfyuiworkers"
JOB_KIND = "GenerationJob"
JOB_PLURAL = "generationjobs"

# A DNS-1123 label: pool names become label values and Service names.
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
SHA256_HEX = r"^[a-f0-9]{64}$"
# ComfyUI model sub-folders are plain directory names (checkpoints, loras, vae, controlnet, ...).
MODEL_FOLDER = r"^[a-z0-9_]+$"
TEMPLATE_NAME = r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$"

IntOrString = int | str


def namespace_of(namespace: str | None) -> str:
    """The namespace kopf passes to our handlers: both CRDs are Namespaced, so there always is one."""
    if not namespace:
        raise ValueError("a comfyfleet custom resource without a namespace: the CRDs are Namespaced")
    return namespace


class CamelModel(BaseModel):
    """Base: camelCase aliases as in the CRD, snake_case attributes in Python."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    def to_k8s(self) -> dict[str, Any]:
        """Dump as the CRD's JSON shape: camelCase keys, unset optional fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# ---------------------------------------------------------------------------------------------
# Shared


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(CamelModel):
    """A status condition, shaped like metav1.Condition."""

    type: str
    status: ConditionStatus
    reason: str | None = None
    message: str | None = None
    last_transition_time: datetime | None = None
    observed_generation: int | None = Field(None, ge=0)


def rfc3339(moment: datetime | float) -> str:
    """Format a datetime or epoch seconds as Kubernetes does (UTC, whole seconds, `Z`)."""
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, tz=UTC)
    elif moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: Sequence[Mapping[str, Any]] | None,
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    now: datetime | float,
    observed_generation: int | None = None,
) -> list[dict[str, Any]]:
    """Return a new conditions list with `type_` set; lastTransitionTime moves only when status changes."""
    result: list[dict[str, Any]] = []
    replaced = False
    for existing in conditions or []:
        if existing.get("type") != type_:
            result.append(dict(existing))
            continue
        changed = existing.get("status") != status
        transition = rfc3339(now) if changed else existing.get("lastTransitionTime") or rfc3339(now)
        result.append(_condition(type_, status, reason, message, transition, observed_generation))
        replaced = True
    if not replaced:
        result.append(_condition(type_, status, reason, message, rfc3339(now), observed_generation))
    return result


def _condition(
    type_: str, status: str, reason: str, message: str, transition: str, generation: int | None
) -> dict[str, Any]:
    cond: dict[str, Any] = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition,
    }
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond


# ---------------------------------------------------------------------------------------------
# ComfyUIWorker spec


class GPUSpec(CamelModel):
    """GPUs per worker pod; count 0 makes a CPU pool (simulators, tests)."""

    count: int = Field(1, ge=0, le=16)
    resource_name: str = Field("nvidia.com/gpu", min_length=1)


class ResourceRequirements(CamelModel):
    """Container resources beyond the GPU (cpu, memory, ephemeral-storage, ...)."""

    limits: dict[str, IntOrString] | None = None
    requests: dict[str, IntOrString] | None = None


class Toleration(CamelModel):
    """A pod toleration (e.g. for GPU node taints)."""

    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class EnvVar(CamelModel):
    """An environment variable: a literal value or a valueFrom source (secretKeyRef, ...)."""

    name: str = Field(min_length=1)
    value: str | None = None
    value_from: dict[str, Any] | None = None


class ModelFile(CamelModel):
    """A model file the worker image fetches into ComfyUI's models/<folder>/ before it starts."""

    name: str = Field(min_length=1)
    url: str | None = None
    sha256: str | None = Field(None, pattern=SHA256_HEX)
    folder: str = Field("checkpoints", pattern=MODEL_FOLDER)


class LoraFile(CamelModel):
    """A LoRA the worker image fetches into ComfyUI's models/loras/."""

    name: str = Field(min_length=1)
    url: str | None = None
    sha256: str | None = Field(None, pattern=SHA256_HEX)


class ProbeSpec(CamelModel):
    """ComfyUI health probing, used for the pod's probes and the operator's own checks."""

    interval_seconds: int = Field(10, ge=1, le=3600)
    timeout_seconds: int = Field(5, ge=1, le=600)
    failure_threshold: int = Field(3, ge=1, le=100)


class AutoscalingSpec(CamelModel):
    """Queue-driven autoscaling; when enabled, spec.replicas is ignored."""

    enabled: bool = False
    min_replicas: int = Field(1, ge=0)
    max_replicas: int | None = Field(None, ge=1)
    target_queue_per_worker: int = Field(1, ge=1)
    scale_down_idle_seconds: int = Field(300, ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.enabled and self.max_replicas is None:
            raise ValueError("autoscaling.maxReplicas is required when autoscaling is enabled")
        if self.max_replicas is not None and self.min_replicas > self.max_replicas:
            raise ValueError("autoscaling.minReplicas must not exceed maxReplicas")
        return self


class ComfyUIWorkerSpec(CamelModel):
    """spec of a ComfyUIWorker: one pool of identical ComfyUI pods."""

    replicas: int = Field(1, ge=0)
    image: str = Field(min_length=1)
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    gpu: GPUSpec = Field(default_factory=GPUSpec)
    resources: ResourceRequirements | None = None
    node_selector: dict[str, str] | None = None
    tolerations: list[Toleration] | None = None
    env: list[EnvVar] | None = None
    extra_args: list[str] | None = None
    port: int = Field(8188, ge=1, le=65535)
    models: list[ModelFile] | None = None
    loras: list[LoraFile] | None = None
    # Jobs committed to a pod ahead of the one it runs (0 or 1); published with each pod for dispatch.
    prefetch: int = Field(0, ge=0, le=1)
    probe: ProbeSpec = Field(default_factory=ProbeSpec)
    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ComfyUIWorkerSpec:
        """Parse the spec of a ComfyUIWorker object (a kopf body or a plain dict)."""
        return cls.model_validate(dict(body.get("spec") or {}))


# ---------------------------------------------------------------------------------------------
# ComfyUIWorker status

WorkerPhase = Literal["Pending", "Ready", "Scaling", "Degraded", "ScaledToZero", "Failed"]
WorkerState = Literal["Starting", "Idle", "Busy", "Unhealthy", "Terminating"]


class WorkerPodStatus(CamelModel):
    """One pod of the pool as the operator last saw it."""

    pod: str
    ip: str | None = None
    state: WorkerState
    current_job: str | None = None
    last_job_at: datetime | None = None


class ComfyUIWorkerStatus(CamelModel):
    """status of a ComfyUIWorker."""

    phase: WorkerPhase | None = None
    replicas: int | None = Field(None, ge=0)
    desired_replicas: int | None = Field(None, ge=0)
    ready_replicas: int | None = Field(None, ge=0)
    busy_replicas: int | None = Field(None, ge=0)
    queue_depth: int | None = Field(None, ge=0)
    workers: list[WorkerPodStatus] | None = None
    conditions: list[Condition] | None = None
    observed_generation: int | None = None
    selector: str | None = None
    last_scale_time: datetime | None = None

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ComfyUIWorkerStatus:
        """Parse the status of a ComfyUIWorker object (missing status -> all fields unset)."""
        return cls.model_validate(dict(body.get("status") or {}))


# ---------------------------------------------------------------------------------------------
# GenerationJob spec


def camel_twin(model: type[BaseModel], name: str, doc: str, exclude: frozenset[str]) -> type[CamelModel]:
    """A CamelModel with `model`'s fields (types, limits, defaults) minus `exclude`, under camelCase aliases."""
    fields: dict[str, Any] = {
        field: (info.annotation, copy.copy(info)) for field, info in model.model_fields.items() if field not in exclude
    }
    return create_model(name, __base__=CamelModel, __doc__=doc, __module__=__name__, **fields)


# The job model's GenerateParams is the one definition of the generation parameters and their limits;
# the CRD schema is checked against this twin (tests/unit/test_crds.py), so all three agree.
if TYPE_CHECKING:
    GenerationParams = CamelModel
else:
    GenerationParams = camel_twin(
        GenerateParams,
        "GenerationParams",
        "Parameters applied to the template (or workflow); unset ones keep the graph's own values.\n\n"
        "`comfyfleet.jobs.params.GenerateParams` under camelCase names, minus `image`: input images are\n"
        "uploaded through the API, which kubectl cannot do.",
        exclude=frozenset({"image"}),
    )


class GenerationJobSpec(CamelModel):
    """spec of a GenerationJob: exactly one of workflow (a ComfyUI API graph) or template, plus params."""

    workflow: dict[str, Any] | None = None
    template: str | None = Field(None, pattern=TEMPLATE_NAME)
    params: GenerationParams | None = None
    # 10 is the most urgent; 5 is what the API uses when a client says nothing.
    priority: int = Field(5, ge=1, le=10)
    pool: str | None = Field(None, pattern=DNS_LABEL, max_length=63)
    # Unset: the dispatcher's configured default (COMFYFLEET_JOB_TIMEOUT_SECONDS), as for API jobs.
    timeout_seconds: int | None = Field(None, ge=5, le=86400)

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.workflow is None) == (self.template is None):
            raise ValueError("exactly one of spec.workflow or spec.template must be set")
        return self

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> GenerationJobSpec:
        """Parse the spec of a GenerationJob object (a kopf body or a plain dict)."""
        return cls.model_validate(dict(body.get("spec") or {}))


# ---------------------------------------------------------------------------------------------
# GenerationJob status

JobPhase = Literal["Pending", "Queued", "Dispatched", "Running", "Succeeded", "Failed", "Cancelled"]
TERMINAL_PHASES: frozenset[str] = frozenset({"Succeeded", "Failed", "Cancelled"})


class JobOutput(CamelModel):
    """One output file of a finished job."""

    filename: str = Field(min_length=1)
    url: str | None = None
    content_type: str | None = None


class JobError(CamelModel):
    """Why a job failed: a stable machine-readable code and a human message."""

    code: str = Field(min_length=1)
    message: str | None = None


class GenerationJobStatus(CamelModel):
    """status of a GenerationJob. progress is an integer percent, 0-100."""

    phase: JobPhase | None = None
    progress: int | None = Field(None, ge=0, le=100)
    job_id: str | None = None
    worker: str | None = None
    outputs: list[JobOutput] | None = None
    error: JobError | None = None
    attempts: int | None = Field(None, ge=0)
    start_time: datetime | None = None
    completion_time: datetime | None = None
    conditions: list[Condition] | None = None
    observed_generation: int | None = None

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> GenerationJobStatus:
        """Parse the status of a GenerationJob object (missing status -> all fields unset)."""
        return cls.model_validate(dict(body.get("status") or {}))


def spec_problem(exc: ValidationError) -> str:
    """The first problem of an invalid spec, as `spec.<field>: <message>` for status and events."""
    err = exc.errors()[0]
    loc = ".".join(str(part) for part in err.get("loc", ()))
    return f"spec.{loc}: {err['msg']}" if loc else f"spec: {err['msg']}"
