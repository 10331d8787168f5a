"""The job record: one generation request, its state, progress, error and outputs."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field, TypeAdapter

Workflow = dict[str, Any]
"""A ComfyUI API-format graph: {node_id: {"class_type": str, "inputs": {...}}}."""


def utcnow() -> datetime:
    return datetime.now(UTC)


# RFC 4122's variant (binary 10xx) on the 17th hex digit: its two low bits kept.
_VARIANT = {d: "89ab"[int(d, 16) & 3] for d in "0123456789abcdef"}


def new_job_id() -> str:
    """Job ids are UUIDs so they double as ComfyUI prompt ids (re-dispatch idempotency): str(uuid.uuid4()), the
    version and variant bits set on the random hex digits directly (a quarter of uuid4's cost; every request
    makes one)."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


class JobState(StrEnum):
    """Lifecycle of a job; the allowed moves are in comfyfleet.jobs.states."""

    QUEUED = "queued"
    DISPATCHED = "dispatched"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


class ErrorCode(StrEnum):
    """Typed job error codes; `retryable` says which ones a retry can fix."""

    VALIDATION = "validation_error"
    EXECUTION = "execution_error"
    OUT_OF_MEMORY = "out_of_memory"
    TIMEOUT = "timeout"
    WORKER_LOST = "worker_lost"
    NO_CAPABLE_WORKER = "no_capable_worker"
    CANCELLED = "cancelled"
    STORAGE = "storage_error"
    # Could not start within its queue timeout (no capacity, a pool scaled to zero that never came up).
    QUEUE_TIMEOUT = "queue_timeout"
    INTERNAL = "internal_error"

    @property
    def retryable(self) -> bool:
        return self in {ErrorCode.WORKER_LOST, ErrorCode.OUT_OF_MEMORY}


class JobError(BaseModel):
    code: ErrorCode
    message: str
    details: dict[str, Any] | None = None

    @property
    def retryable(self) -> bool:
        return self.code.retryable


class Progress(BaseModel):
    """Sampler progress of the running node, plus an overall fraction for progress bars."""

    value: int = 0
    max: int = 0
    node: str | None = None
    # Overall completion 0..1: finished nodes plus the running node's share.
    fraction: float = Field(0.0, ge=0.0, le=1.0)


class OutputFile(BaseModel):
    filename: str
    node_id: str
    content_type: str = "image/png"
    size: int = 0
    # Where the store keeps it (a path relative to the store root, or an object name).
    key: str
    url: str | None = None
    # Base64 of the file when the job asked for inline outputs and it is small enough (output.inline).
    data: str | None = None


class InputFile(BaseModel):
    """An input image sent with the job; uploaded to the pod before the prompt, named as LoadImage uses it."""

    name: str
    key: str
    size: int = 0


class WebhookSpec(BaseModel):
    """Where to POST the job's signed notifications (comfyfleet.webhooks)."""

    url: str
    # Also notify when the job starts running (once, on its first start), not only on its final state.
    on_start: bool = False


class WebhookDelivery(BaseModel):
    """One notification of a job and how its delivery went (written by the deliverer)."""

    id: str  # the webhook-id header: stable across retries, so receivers can deduplicate
    event: str  # job.started | job.succeeded | job.failed | job.cancelled
    state: Literal["pending", "delivered", "failed"] = "pending"
    attempts: int = 0
    last_status: int | None = None  # the receiver's HTTP status on the last attempt
    last_error: str | None = None
    last_attempt_at: datetime | None = None
    next_attempt_at: datetime | None = None


class OutputSpec(BaseModel):
    """How outputs are stored: converted to a format (Pillow) and/or embedded inline as base64."""

    format: Literal["png", "webp", "jpeg"] | None = None
    quality: int | None = Field(None, ge=1, le=100)
    inline: bool = False


class Job(BaseModel):
    """The durable job record, shared by the API, the dispatcher and the operator."""

    id: str = Field(default_factory=new_job_id)
    owner: str
    workflow: Workflow
    template: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    priority: int = Field(5, ge=1, le=10)
    pool: str | None = None
    state: JobState = JobState.QUEUED
    progress: Progress = Field(default_factory=Progress)
    attempts: int = 0
    max_attempts: int = 3
    timeout_seconds: int = 300
    # Seconds the job may wait for a pod before it fails with queue_timeout (None: the server default).
    queue_timeout_seconds: int | None = None
    # GPU time this job used, summed over attempts, from the pods' own execution timestamps.
    gpu_seconds: float = 0.0
    error: JobError | None = None
    outputs: list[OutputFile] = Field(default_factory=list)
    inputs: list[InputFile] = Field(default_factory=list)
    idempotency_key: str | None = None
    source: str = "api"
    # The ComfyUI endpoint the job was last dispatched to (`worker` in the public API).
    endpoint: str | None = None
    cancel_requested: bool = False
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    dispatched_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # Integrations (defaults keep older records parsing).
    webhook: WebhookSpec | None = None
    webhook_deliveries: list[WebhookDelivery] = Field(default_factory=list)
    output: OutputSpec | None = None
    # W3C traceparent of the API request that created the job (tracing on only): the dispatcher's spans join
    # that trace, and log lines show its trace id (comfyfleet.observability.tracing).
    traceparent: str | None = None


def _dumped_defaults() -> dict[str, Any]:
    """Each Job field's default as model_dump(mode="json") writes it, for the fields whose default is one fixed
    value (not the id or the clock, which a default_factory makes anew)."""
    out: dict[str, Any] = {}
    for name, info in Job.model_fields.items():
        if info.is_required() or name in ("id", "created_at", "updated_at"):
            continue
        adapter: TypeAdapter[Any] = TypeAdapter(info.annotation)  # type: ignore[arg-type]  # set on every field
        out[name] = adapter.dump_python(info.get_default(call_default_factory=True), mode="json")
    return out


# The stored forms of a job (its Redis record, its events' payloads) leave out the fields that hold their
# default: at creation most do (no error, no outputs, no endpoint yet). A reader takes a missing field as its
# default (Job.model_validate does; single-field readers use FIELD_DEFAULTS).
FIELD_DEFAULTS: dict[str, Any] = _dumped_defaults()
# Fields stored whatever they hold: the required ones, those without one fixed default, `state` (a record
# without it is no record to every script) and `priority` (the claim pass and the queues read it).
ALWAYS_STORED = frozenset({"id", "owner", "workflow", "state", "priority", "created_at", "updated_at"})


def without_defaults(dump: dict[str, Any]) -> dict[str, Any]:
    """A job's model_dump(mode="json") (whole or part) less the fields that hold their default."""
    return {k: v for k, v in dump.items() if k in ALWAYS_STORED or v != FIELD_DEFAULTS[k]}
