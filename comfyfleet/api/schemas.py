"""Request and response models of the REST API (camelCase on the wire)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from comfyfleet.api.tokens import JobTokens
from comfyfleet.jobs.model import Job, JobState
from comfyfleet.jobs.params import GenerateParams
from comfyfleet.observability.tracing import trace_id_of
from comfyfleet.settings import QUEUE_TIMEOUT_MIN_SECONDS


class ApiModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class WebhookCreate(ApiModel):
    """Where to POST the job's signed notifications (Standard Webhooks; see README "Webhooks")."""

    url: str = Field(max_length=2048, description="https URL of the receiver (the outbound URL policy applies)")
    on_start: bool = Field(False, description="also notify when the job starts running, not only when it ends")


class OutputCreate(ApiModel):
    """How to store the outputs: converted with Pillow, optionally also returned inline as base64."""

    format: Literal["png", "webp", "jpeg"] | None = Field(None, description="convert image outputs to this format")
    quality: int | None = Field(None, ge=1, le=100, description="webp/jpeg quality (default 90)")
    inline: bool = Field(False, description="embed outputs up to the server's inline limit as base64 (`data`)")


class JobCreate(ApiModel):
    """A generation: a ComfyUI API-format workflow or a named template, plus optional parameter overrides."""

    workflow: dict[str, Any] | None = Field(None, description="ComfyUI API graph {node_id: {class_type, inputs}}")
    template: str | None = Field(None, max_length=64, description="a named template instead of a workflow")
    params: GenerateParams = Field(default_factory=GenerateParams)
    priority: int = Field(5, ge=1, le=10, description="1 (lowest) to 10 (highest)")
    pool: str | None = Field(None, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    timeout_seconds: int | None = Field(None, ge=5, le=24 * 3600)
    queue_timeout_seconds: int | None = Field(
        None, ge=QUEUE_TIMEOUT_MIN_SECONDS, le=7 * 24 * 3600,
        description="fail the job (queue_timeout) if it has not started this many seconds after it was queued")
    idempotency_key: str | None = Field(None, min_length=1, max_length=128)
    input_images: dict[str, str] = Field(
        default_factory=dict, max_length=8,
        description="images for LoadImage nodes: {name: base64, a data: URL or an https:// URL of a PNG/JPEG/WebP}; "
                    "LoadImage's image input names them; URLs are fetched once, at submit",
    )
    webhook: WebhookCreate | None = Field(None, description="signed notifications on the final state (and start)")
    output: OutputCreate | None = Field(None, description="output format and inline base64")

    @model_validator(mode="after")
    def _one_source(self) -> JobCreate:
        if (self.workflow is None) == (self.template is None):
            raise ValueError("give exactly one of workflow or template")
        return self


class ProgressPublic(ApiModel):
    value: int
    max: int
    node: str | None
    percent: int


class OutputPublic(ApiModel):
    filename: str
    node_id: str
    content_type: str
    size: int
    url: str | None
    data: str | None = Field(None, description="base64 of the file when output.inline was asked and it is small")


class WebhookDeliveryPublic(ApiModel):
    id: str
    event: str
    state: str  # pending | delivered | failed
    attempts: int
    last_status: int | None
    last_error: str | None
    last_attempt_at: datetime | None
    next_attempt_at: datetime | None


class ErrorPublic(ApiModel):
    code: str
    message: str
    details: dict[str, Any] | None = None


class JobPublic(ApiModel):
    job_id: str
    owner: str
    state: JobState
    priority: int
    pool: str | None
    template: str | None
    progress: ProgressPublic
    attempts: int
    max_attempts: int
    error: ErrorPublic | None
    outputs: list[OutputPublic]
    worker: str | None
    source: str
    cancel_requested: bool
    queue_timeout_seconds: int | None = None
    gpu_seconds: float = 0.0
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    # When a pod was claimed for the latest attempt (queue wait = dispatchedAt - createdAt on a first attempt).
    dispatched_at: datetime | None = None
    # The job's OpenTelemetry trace id when tracing is on (find its spans in the tracing backend).
    trace_id: str | None = None
    access_token: str | None = Field(
        None, description="short-lived token for this job only: add ?token=... to its events, WebSocket and "
                          "output URLs where no Authorization header can be sent (EventSource, <img src>)")
    access_token_expires_at: datetime | None = Field(None, description="when accessToken stops working")
    webhook_url: str | None = None
    webhook_deliveries: list[WebhookDeliveryPublic] = Field(default_factory=list)

    @classmethod
    def of(cls, job: Job, tokens: JobTokens | None = None) -> JobPublic:
        """The public view; with `tokens`, an access token and output URLs a browser can load as they are."""
        return cls.model_validate(public_view(job, tokens))


def public_view(job: Job, tokens: JobTokens | None = None) -> dict[str, Any]:
    """JobPublic's fields of a job by their names on the wire, as plain data (nested views as dicts): what
    JobPublic.of validates and public_json writes."""
    token, expires = tokens.issue(job.id, job.owner, time.time()) if tokens else (None, None)
    error = job.error
    return {
        "jobId": job.id, "owner": job.owner, "state": job.state, "priority": job.priority, "pool": job.pool,
        "template": job.template, "progress": _progress_view(job),
        "attempts": job.attempts, "maxAttempts": job.max_attempts,
        "error": {"code": error.code.value, "message": error.message, "details": error.details} if error else None,
        "outputs": [{"filename": o.filename, "nodeId": o.node_id, "contentType": o.content_type, "size": o.size,
                     "url": with_token(o.url, token), "data": o.data} for o in job.outputs],
        "worker": job.endpoint, "source": job.source, "cancelRequested": job.cancel_requested,
        "queueTimeoutSeconds": job.queue_timeout_seconds, "gpuSeconds": job.gpu_seconds,
        "createdAt": job.created_at, "updatedAt": job.updated_at, "startedAt": job.started_at,
        "finishedAt": job.finished_at, "dispatchedAt": job.dispatched_at, "traceId": trace_id_of(job.traceparent),
        "accessToken": token,
        "accessTokenExpiresAt": datetime.fromtimestamp(expires, UTC) if expires is not None else None,
        "webhookUrl": job.webhook.url if job.webhook else None,
        "webhookDeliveries": [{_DELIVERY_NAMES[k]: v for k, v in d.model_dump().items()}
                              for d in job.webhook_deliveries],
    }


_DELIVERY_NAMES = {name: field.alias or name for name, field in WebhookDeliveryPublic.model_fields.items()}


def public_json(job: Job, tokens: JobTokens | None = None) -> bytes:
    """JobPublic.of(job, tokens).model_dump_json(by_alias=True) to the byte, without building the model (a
    third of the cost; the front door answers every request with one): orjson writes the view as pydantic
    would (datetimes, UTC as Z, floats, text). Whatever orjson refuses (an integer beyond 64 bits in an
    error's details) goes through the model."""
    view = public_view(job, tokens)
    try:
        return orjson.dumps(view, option=orjson.OPT_UTC_Z)
    except TypeError:
        return JobPublic.model_validate(view).model_dump_json(by_alias=True).encode()


def progress_of(job: Job) -> ProgressPublic:
    """A succeeded job reads complete: value == max, percent 100, no running node."""
    return ProgressPublic(**_progress_view(job))


def _progress_view(job: Job) -> dict[str, Any]:
    p = job.progress
    if job.state is JobState.SUCCEEDED:
        top = max(p.max, 1)
        return {"value": top, "max": top, "node": None, "percent": 100}
    return {"value": p.value, "max": p.max, "node": p.node, "percent": int(p.fraction * 100)}


def with_token(url: str | None, token: str | None) -> str | None:
    """Our own (relative) output URLs get the job's token; a store's signed absolute URL loads as it is."""
    if not url or not token or not url.startswith("/"):
        return url
    return f"{url}{'&' if '?' in url else '?'}token={token}"


class JobsPublic(ApiModel):
    jobs: list[JobPublic]
    next_before: float | None = None


class WorkerPublic(ApiModel):
    id: str
    url: str | None = Field(description="admins only; null for other users")
    pool: str
    state: str  # ready | busy | unhealthy
    current_job: str | None
    checkpoints: list[str]
    loras: list[str]
    queue_remaining: int
    last_seen_at: float | None
    last_error: str | None = Field(description="admins see the probe's error; other users a short summary")
    info: dict[str, Any]


class WorkersPublic(ApiModel):
    workers: list[WorkerPublic]
    ready: int
    busy: int
    unhealthy: int


class WorkerCreate(ApiModel):
    """A ComfyUI server to add to the registry at run time (it is probed before it gets jobs)."""

    url: str = Field(max_length=2048, pattern=r"^https?://[^\s/]+(:\d+)?(/[^\s]*)?$",
                     description="base URL of a ComfyUI server, e.g. http://gpu-box:8188")
    pool: str = Field("default", max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class VerifyLoraRequest(ApiModel):
    loras: list[str] = Field(min_length=1, max_length=100)
    pool: str | None = None


class LoraAvailability(ApiModel):
    name: str
    available: bool
    workers: list[str]


class VerifyLoraPublic(ApiModel):
    results: list[LoraAvailability]
    all_available: bool


class QueueStatsPublic(ApiModel):
    waiting: int
    active: int
    retrying: int
    completed: int
    failed: int
    cancelled: int
    created: int
    by_priority: dict[str, int]
    # Queued jobs by the pool they asked for ("any": every pool may run them; "other": a pool with no endpoint),
    # and the age of the oldest one in seconds (0 when none): what `comfyfleet status` shows.
    by_pool: dict[str, int] = Field(default_factory=dict)
    oldest_age_seconds: dict[str, float] = Field(default_factory=dict)


class QueueCleanRequest(ApiModel):
    older_than_seconds: float | None = Field(None, ge=0, le=100 * 365 * 24 * 3600)


class QueueCleanPublic(ApiModel):
    removed: int


class HealthPublic(ApiModel):
    status: str
    version: str


class HealthDetailedPublic(HealthPublic):
    redis: str
    workers: dict[str, int]
    queue: dict[str, int]


class MePublic(ApiModel):
    """Who the caller is, so a page can show admin actions only to admins (the routes check it again)."""

    owner: str
    admin: bool


class UsageDay(ApiModel):
    date: str
    gpu_seconds: float
    attempts: int


class UsagePublic(ApiModel):
    """GPU-seconds a user's jobs used per UTC day (from the pods' own execution timestamps)."""

    user: str
    days: list[UsageDay]
    total_gpu_seconds: float
