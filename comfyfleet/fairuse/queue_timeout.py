"""Queue timeouts: a job that cannot start within its bound ends with a clear error instead of waiting forever.

`expired` is the pure decision; `sweep_queue_timeouts` applies it to the queued jobs under the scheduler's
lock (so a claim cannot dispatch a job while it is being failed). The API runs the sweep in the background;
the dispatcher's maintenance loop may call the same function.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta
from typing import Any

from comfyfleet.dispatch.scheduler import drop_rq_job, signals_deferred
from comfyfleet.dispatch.service import Dispatcher
from comfyfleet.jobs.model import ErrorCode, Job, JobError, JobState, utcnow
from comfyfleet.jobs.states import transition
from comfyfleet.keys import PRIORITIES

log = logging.getLogger(__name__)

# Queued ids are read and checked this many at a time.
BATCH = 500


def queue_deadline(job: Job, default_seconds: int) -> datetime:
    return job.created_at + timedelta(seconds=job.queue_timeout_seconds or default_seconds)


def expired(job: Job | None, now: datetime, default_seconds: int) -> bool:
    """A job that never started and is still queued past its queue deadline (retries are not counted)."""
    return job is not None and _expired(job.state, job.attempts, job.created_at, job.queue_timeout_seconds, now,
                                        default_seconds)


def _expired(state: JobState, attempts: int, created_at: datetime, queue_timeout_seconds: int | None,
             now: datetime, default_seconds: int) -> bool:
    return (state is JobState.QUEUED and attempts == 0
            and now >= created_at + timedelta(seconds=queue_timeout_seconds or default_seconds))


# The record fields `expired` reads: the sweep reads these, not whole records (the workflow can be large, and
# the API sweeps every queued job every few seconds).
SWEEP_FIELDS = ("state", "attempts", "created_at", "queue_timeout_seconds")


def expired_fields(row: list[bytes | None], now: datetime, default_seconds: int) -> bool | None:
    """`expired` from a record's SWEEP_FIELDS (JSON values; state None: no record), or None when a value does
    not read: then the whole record decides (and a corrupt one is quarantined)."""
    if row[0] is None:
        return False
    try:
        values: list[Any] = [json.loads(v) if v is not None else None for v in row]
        state, attempts, created, timeout = values
        return _expired(JobState(state), int(attempts or 0), datetime.fromisoformat(created),
                        int(timeout) if timeout is not None else None, now, default_seconds)
    except (ValueError, TypeError, RecursionError):
        return None


def queue_timeout_error(job: Job, default_seconds: int) -> JobError:
    seconds = job.queue_timeout_seconds or default_seconds
    where = f"in pool {job.pool}" if job.pool else "on any pool"
    return JobError(code=ErrorCode.QUEUE_TIMEOUT,
                    message=f"the job could not start within its queue timeout of {seconds} s: no pod {where} "
                            "was free and able to run it",
                    details={"queueTimeoutSeconds": seconds, "pool": job.pool})


def row_deadline(row: list[bytes | None], default_seconds: int) -> datetime | None:
    """The queue deadline from a record's SWEEP_FIELDS, or None when there is no record or it does not read."""
    if row[0] is None:
        return None
    try:
        created, timeout = json.loads(row[2] or b"null"), json.loads(row[3] or b"null")
        return datetime.fromisoformat(created) + timedelta(seconds=int(timeout) if timeout else default_seconds)
    except (ValueError, TypeError, RecursionError):
        return None


def sweep_queue_timeouts(dispatcher: Dispatcher, default_seconds: int, now: datetime | None = None,
                         deadlines: dict[str, datetime] | None = None) -> list[str]:
    """Fail every queued job (in its RQ queue or parked for a pool with no healthy endpoint) past its
    queue deadline; returns their ids.

    `deadlines`, kept by the caller from one sweep to the next: the queue deadline of each queued job read so
    far (a job's never changes), so a job is read once and then again only when its deadline has passed. Without
    it every queued job is read at every sweep: the API sweeps every few seconds, and with thousands of jobs
    queued that was a tenth of its CPU under load."""
    now = now or utcnow()
    ids = [i for p in PRIORITIES for i in dispatcher.queue(p).get_job_ids()] + dispatcher.scheduler.parked_ids()
    if deadlines is not None:
        queued = set(ids)
        for gone in [i for i in deadlines if i not in queued]:
            del deadlines[gone]
        ids = [i for i in ids if (deadline := deadlines.get(i)) is None or deadline <= now]
    failed: list[str] = []
    for start in range(0, len(ids), BATCH):
        chunk = ids[start:start + BATCH]
        with dispatcher.conn.pipeline(transaction=False) as pipe:
            for job_id in chunk:
                pipe.hmget(dispatcher.keys.job(job_id), SWEEP_FIELDS)
            rows = pipe.execute()
        verdicts: dict[str, bool | None] = {}
        for job_id, row in zip(chunk, rows, strict=True):
            if deadlines is not None and job_id not in deadlines:
                deadline = row_deadline(row, default_seconds)
                if deadline is not None:
                    deadlines[job_id] = deadline
                    if deadline > now:  # not due: the rest of the record does not matter yet
                        verdicts[job_id] = False
                        continue
            verdicts[job_id] = expired_fields(row, now, default_seconds)
        unclear = [i for i, v in verdicts.items() if v is None]
        for job_id, job in zip(unclear, dispatcher.repo.get_many(unclear), strict=True):
            verdicts[job_id] = expired(job, now, default_seconds)
        due = [i for i in chunk if verdicts[i]]
        failed += [job_id for job_id in due if _fail_if_still_due(dispatcher, job_id, default_seconds, now)]
    return failed


def _fail_if_still_due(dispatcher: Dispatcher, job_id: str, default_seconds: int, now: datetime) -> bool:
    with signals_deferred(), dispatcher.scheduler.lock():
        job = dispatcher.repo.get(job_id)
        if job is None or not expired(job, now, default_seconds):
            return False  # claimed or cancelled meanwhile
        dispatcher.scheduler.unqueue(job_id, job.priority, job.pool)
        drop_rq_job(dispatcher.conn, job_id)
        error = queue_timeout_error(job, default_seconds)
        dispatcher.repo.update(job_id, lambda j: transition(j, JobState.FAILED, error=error))
    log.info("job %s failed: %s", job_id, error.message)
    return True
