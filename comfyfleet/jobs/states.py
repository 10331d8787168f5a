"""Job state machine: the one table of allowed transitions, and a pure transition function."""

from __future__ import annotations

from datetime import datetime

from comfyfleet.jobs.model import Job, JobError, JobState, utcnow

S = JobState

TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    S.QUEUED: frozenset({S.DISPATCHED, S.FAILED, S.CANCELLED}),
    # A dispatched job goes back to QUEUED when its pod is lost before or while it runs (retry).
    S.DISPATCHED: frozenset({S.RUNNING, S.QUEUED, S.SUCCEEDED, S.FAILED, S.CANCELLED}),
    S.RUNNING: frozenset({S.QUEUED, S.SUCCEEDED, S.FAILED, S.CANCELLED}),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
}


class InvalidTransition(Exception):
    """A state change the table does not allow (e.g. cancelling a finished job)."""

    def __init__(self, current: JobState, target: JobState):
        super().__init__(f"job cannot go from {current.value} to {target.value}")
        self.current = current
        self.target = target


def can_transition(current: JobState, target: JobState) -> bool:
    return target in TRANSITIONS[current]


def transition(
    job: Job,
    target: JobState,
    *,
    error: JobError | None = None,
    endpoint: str | None = None,
    now: datetime | None = None,
) -> Job:
    """Return a copy of job moved to target, with the timestamps and counters that move implies."""
    if not can_transition(job.state, target):
        raise InvalidTransition(job.state, target)
    now = now or utcnow()
    changes: dict[str, object] = {"state": target, "updated_at": now}
    if target is S.DISPATCHED:
        changes.update(dispatched_at=now, attempts=job.attempts + 1, endpoint=endpoint, error=None)
    elif target is S.RUNNING:
        changes["started_at"] = job.started_at or now
    elif target is S.QUEUED:
        # Back in the queue for a retry: keep the last error visible until the next attempt starts.
        changes.update(endpoint=None, error=error, progress=job.progress.model_copy(update={"value": 0, "fraction": 0}))
    if target.is_terminal:
        changes["finished_at"] = now
        if target is S.SUCCEEDED:
            changes["progress"] = job.progress.model_copy(update={"fraction": 1.0})
        if error is not None:
            changes["error"] = error
    return job.model_copy(update=changes)
