"""Pure mapping of a comfyfleet Job record to GenerationJob status (status out).

Phases come from the job model's `JobState` (one table below, which a test holds to every state);
the way in, a GenerationJob spec to a Job, is `job_spec`.

Progress in status is an integer percent, 0-100: it sorts and compares in `kubectl` and jsonpath
filters, which a "40%" string would not. Success always reports 100.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from comfyfleet.jobs.model import ErrorCode, Job, JobState
from comfyfleet.operator.models import (
    TERMINAL_PHASES,
    JobError,
    JobOutput,
    JobPhase,
    rfc3339,
    set_condition,
)

# Job state -> GenerationJob status.phase. `Pending` has no job state: it is a GenerationJob the
# operator has not enqueued yet.
STATE_TO_PHASE: dict[JobState, JobPhase] = {
    JobState.QUEUED: "Queued",
    JobState.DISPATCHED: "Dispatched",
    JobState.RUNNING: "Running",
    JobState.SUCCEEDED: "Succeeded",
    JobState.FAILED: "Failed",
    JobState.CANCELLED: "Cancelled",
}
# The job model's code for a spec that cannot run, so kubectl and API clients see one code.
INVALID_SPEC_CODE = ErrorCode.VALIDATION.value
# The single condition of a GenerationJob, Knative-style: Unknown while in flight, True on success,
# False (reason Failed or Cancelled) otherwise.
CONDITION_SUCCEEDED = "Succeeded"


def phase_for_state(state: JobState | str) -> JobPhase:
    """GenerationJob phase of a job state (or its value, case-insensitive); ValueError for an unknown state."""
    try:
        return STATE_TO_PHASE[JobState(str(state).lower())]
    except ValueError:
        raise ValueError(f"unknown job state {state!r}; expected one of {sorted(JobState)}") from None


def is_terminal(phase: str | None) -> bool:
    """True for Succeeded, Failed and Cancelled: nothing changes the job any more."""
    return phase in TERMINAL_PHASES


def progress_percent(value: float | str | None, maximum: float | None = None) -> int | None:
    """Integer percent 0-100 from a percent number, a "40%" string, or value/maximum.

    For the job model's `Progress.fraction` (0..1) pass maximum=1; for ComfyUI's sampler steps pass
    value=step, maximum=steps. Values are clamped to 0-100 and rounded down (99.9% is not done);
    None stays None.
    """
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().removesuffix("%").strip()
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"progress {value!r} is not a number or percent") from None
    number = float(value)
    if maximum is not None:
        if maximum <= 0:
            return 0
        number = number / float(maximum) * 100.0
    if math.isnan(number):
        return None
    # round() first so float noise (0.29 * 100 = 28.999...) does not lose a whole percent.
    return max(0, min(100, math.floor(round(number, 6))))


def job_status(
    state: JobState | str,
    *,
    now: datetime | float,
    job_id: str | None = None,
    progress: float | str | None = None,
    outputs: Sequence[JobOutput | Mapping[str, Any]] = (),
    error: JobError | Mapping[str, Any] | None = None,
    attempts: int | None = None,
    worker: str | None = None,
    start_time: datetime | float | None = None,
    completion_time: datetime | float | None = None,
    previous: Mapping[str, Any] | None = None,
    generation: int | None = None,
) -> dict[str, Any]:
    """GenerationJob status (camelCase dict for patch.status) for a job in `state`.

    Args:
        state: the job state (or its value: queued, dispatched, running, succeeded, failed, cancelled).
        now: current time; fills startTime on first running and completionTime on finishing when
            the caller does not pass them.
        progress: percent (number or "40%"; see `progress_percent` for fractions); forced to 100 on
            success, kept from `previous` when None.
        outputs / error: our models, or mappings in camelCase or snake_case (the job model's
            OutputFile / JobError dumps work as they are; extra keys are dropped).
        previous: the current status; a terminal phase there is never left (late updates from a
            retried or cancelled job do not resurrect it), and startTime/conditions carry over.
        generation: metadata.generation, recorded as observedGeneration.
    """
    previous = previous or {}
    phase = phase_for_state(state)
    if is_terminal(previous.get("phase")) and previous.get("phase") != phase:
        return dict(previous)
    status: dict[str, Any] = {"phase": phase}
    if job_id is not None or previous.get("jobId"):
        status["jobId"] = job_id if job_id is not None else previous["jobId"]
    if worker is not None or previous.get("worker"):
        status["worker"] = worker if worker is not None else previous["worker"]
    status.update(_progress_fields(phase, progress, previous))
    if outputs:
        status["outputs"] = [JobOutput.model_validate(o).to_k8s() for o in outputs]
    if error is not None and phase in ("Failed", "Cancelled"):
        status["error"] = JobError.model_validate(error).to_k8s()
    if attempts is not None or previous.get("attempts") is not None:
        status["attempts"] = attempts if attempts is not None else previous["attempts"]
    status.update(_times(phase, now, start_time, completion_time, previous))
    status["conditions"] = job_conditions(
        previous.get("conditions"), phase, status.get("error"), now, generation
    )
    if generation is not None:
        status["observedGeneration"] = generation
    return status


def invalid_spec_status(
    message: str, *, now: datetime | float, generation: int | None = None
) -> dict[str, Any]:
    """Status of a GenerationJob whose spec cannot run: Failed with the job model's validation_error code."""
    error = {"code": INVALID_SPEC_CODE, "message": message}
    status: dict[str, Any] = {
        "phase": "Failed",
        "error": error,
        "completionTime": rfc3339(now),
        "conditions": job_conditions(None, "Failed", error, now, generation),
    }
    if generation is not None:
        status["observedGeneration"] = generation
    return status


def job_conditions(
    previous: Sequence[Mapping[str, Any]] | None,
    phase: str,
    error: Mapping[str, Any] | None,
    now: datetime | float,
    generation: int | None = None,
) -> list[dict[str, Any]]:
    """The Succeeded condition for `phase` (Unknown in flight, True on success, False otherwise)."""
    conds = [dict(c) for c in previous or []]
    if phase == "Succeeded":
        return set_condition(conds, CONDITION_SUCCEEDED, "True", "Succeeded", "job finished", now, generation)
    if phase in ("Failed", "Cancelled"):
        message = (error or {}).get("message") or (error or {}).get("code") or phase.lower()
        return set_condition(conds, CONDITION_SUCCEEDED, "False", phase, str(message), now, generation)
    return set_condition(
        conds, CONDITION_SUCCEEDED, "Unknown", phase, f"job is {phase.lower()}", now, generation
    )


def _progress_fields(phase: str, progress: float | str | None, previous: Mapping[str, Any]) -> dict[str, Any]:
    if phase == "Succeeded":
        return {"progress": 100}
    percent = progress_percent(progress)
    if percent is None:
        percent = previous.get("progress")
    if percent is None:
        percent = 0
    return {"progress": percent}


def _times(
    phase: str,
    now: datetime | float,
    start_time: datetime | float | None,
    completion_time: datetime | float | None,
    previous: Mapping[str, Any],
) -> dict[str, Any]:
    times: dict[str, Any] = {}
    if start_time is not None:
        times["startTime"] = rfc3339(start_time)
    elif previous.get("startTime"):
        times["startTime"] = previous["startTime"]
    elif phase in ("Running", "Succeeded"):
        times["startTime"] = rfc3339(now)
    if is_terminal(phase):
        if completion_time is not None:
            times["completionTime"] = rfc3339(completion_time)
        else:
            times["completionTime"] = previous.get("completionTime") or rfc3339(now)
    return times


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
        job.state,
        now=now,
        job_id=job.id,
        progress=job.progress.fraction * 100,
        outputs=outputs,
        error=error,
        attempts=job.attempts,
        worker=job.endpoint,
        start_time=job.started_at,
        completion_time=job.finished_at,
        previous=previous,
        generation=generation,
    )


def lost_job_status(job_id: str, *, now: datetime | float, previous: Mapping[str, Any] | None,
                    generation: int | None) -> dict[str, Any]:
    """Status when the job record is gone from Redis (flushed, or expired long after finishing)."""
    error = {"code": ErrorCode.INTERNAL.value, "message": f"job {job_id} is no longer in the job store"}
    return job_status(JobState.FAILED, now=now, job_id=job_id, error=error, previous=previous, generation=generation)
