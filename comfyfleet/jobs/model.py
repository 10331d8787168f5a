"""The job record: one generation request, its state, progress, error and outputs."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

Workflow = dict[str, Any]
"""A ComfyUI API-format graph: {node_id: {"class_type": str, "inputs": {...}}}."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_job_id() -> str:
    """Job ids are UUIDs so they double as ComfyUI prompt ids (re-dispatch idempotency)."""
    return str(uuid.uuid4())


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


class InputFile(BaseModel):
    """An input image sent with the job; uploaded to the pod before the prompt, named as LoadImage uses it."""

    name: str
    key: str
    size: int = 0


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
    worker: str | None = None
    cancel_requested: bool = False
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    dispatched_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
