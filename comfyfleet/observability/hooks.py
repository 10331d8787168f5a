"""The calls dispatch code makes at each step of a job's life; each is one `# HOOK(observability)` line.

Where each is called:
- `observe_submit(job) -> job`: Dispatcher.submit, before the record is created (trace context + log fields).
- `start_attempt(job, endpoint_id, endpoint, adopted=) -> Attempt`: the runner, once the dispatched record and
  its endpoint are known: binds the log context of the job's task, observes a first attempt's queue wait.
- `note_comfy_event(attempt, event)`: the runner's handler of every ComfyUI websocket event.
- `note_prompt_finished(attempt)` / `note_outputs_stored(attempt)`: when the run returned its result, and
  when every output is stored.
- `observe_finished(job, attempt)`: after the attempt is settled (final, or re-queued for a retry);
  attempt None for jobs settled without running (failed fast, cancelled while queued, lost by RQ).
  It may block briefly (a span export in tests): call it off the event loop.
- process start: `start_dispatcher_observability(settings, registry)` with the registry the dispatcher serves.

`observe_submit` and `start_attempt` bind the job's log fields into the current contextvars context: call them
where that context ends with the job (a thread from asyncio.to_thread, or the job's own asyncio task), never
in a loop that goes on to the next job, or its lines would carry the previous job's fields.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

from comfyfleet.jobs.model import Job
from comfyfleet.observability import tracing
from comfyfleet.observability.logs import bind_job
from comfyfleet.observability.metrics import (
    Attempt,
    JobMetrics,
    attempt_observations,
    claim_observations,
    emit,
    queue_wait,
    register_job_metrics,
)

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from comfyfleet.settings import DispatchSettings

__all__ = ["Attempt", "note_comfy_event", "note_outputs_stored", "note_prompt_finished", "observe_finished",
           "observe_submit", "start_attempt", "start_dispatcher_observability"]

log = logging.getLogger(__name__)


class EndpointLike(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def pool(self) -> str: ...


def observe_submit(job: Job) -> Job:
    """A job about to be recorded: put the API request's trace context on it and its fields on log lines."""
    job = tracing.with_trace_context(job)
    bind_job(job)
    return job


def start_attempt(job: Job, endpoint_id: str | None, endpoint: EndpointLike | None, *,
                  adopted: bool = False) -> Attempt:
    """The collector of one attempt's facts (job: the dispatched record; endpoint: its registry entry, None
    when it is gone; adopted: taken over from a dispatcher that died); binds the job's log context and
    observes the queue wait (metric and span) of a first attempt."""
    pool = endpoint.pool if endpoint is not None else None
    bind_job(job, endpoint=endpoint_id, pool=pool)
    log.info("job %s attempt %d %s on %s", job.id, job.attempts, "adopted" if adopted else "starts",
             endpoint_id or "no endpoint")
    if not adopted:
        emit(claim_observations(job, pool))
        if queue_wait(job) is not None and job.dispatched_at is not None:
            try:
                tracing.record_queue_wait(job, pool, endpoint_id, job.created_at, job.dispatched_at)
            except Exception as exc:  # noqa: BLE001 - a tracing failure must never fail a job
                log.warning("job %s: could not record its queue-wait span: %s", job.id, exc)
    dispatched = job.dispatched_at.timestamp() if job.dispatched_at else None
    return Attempt(job_id=job.id, attempt=job.attempts, endpoint=endpoint_id, pool=pool, template=job.template,
                   dispatched_at=dispatched)


def note_comfy_event(attempt: Attempt | None, event: Any) -> None:
    """Record the execution timestamps ComfyUI sends with its events (and when the start arrived here)."""
    if attempt is None:
        return
    kind = getattr(event, "type", None)
    stamp = getattr(event, "timestamp", None)
    if kind == "execution_start" and attempt.prompt_started_at is None:
        attempt.prompt_started_at = time.time()
    if isinstance(kind, str) and isinstance(stamp, int) and kind.startswith("execution_"):
        attempt.pod_events.append((kind, stamp))


def note_prompt_finished(attempt: Attempt | None) -> None:
    if attempt is not None and attempt.prompt_finished_at is None:
        attempt.prompt_finished_at = time.time()


def note_outputs_stored(attempt: Attempt | None) -> None:
    if attempt is not None:
        attempt.outputs_stored_at = time.time()


def observe_finished(job: Job, attempt: Attempt | None = None) -> None:
    """An attempt was settled (job: the record afterwards): outcome/retry/timing metrics and its spans."""
    emit(attempt_observations(job, attempt))
    if attempt is None:
        return
    pod_seconds = attempt.pod_execution_seconds()
    log.info("job %s attempt %d ended: %s%s%s", job.id, attempt.attempt, job.state.value,
             f" ({job.error.code.value})" if job.error is not None else "",
             f", {pod_seconds:.2f} s on the pod" if pod_seconds is not None else "")
    try:
        tracing.record_attempt(job, attempt)
    except Exception as exc:  # noqa: BLE001 - a tracing failure must never fail a job
        log.warning("job %s: could not record its attempt spans: %s", job.id, exc)


def start_dispatcher_observability(settings: DispatchSettings, registry: CollectorRegistry) -> JobMetrics:
    """The dispatcher process: traces (when configured) and the job families in the registry it serves."""
    tracing.setup_tracing("dispatch", settings)
    return register_job_metrics(registry)
