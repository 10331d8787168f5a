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
from comfyfleet.keys import PRIORITIES, as_text

log = logging.getLogger(__name__)

# Queued ids are read and checked this many at a time, in at most MAX_ROUNDS batches a sweep (the rest of a
# large wave of due jobs waits for the next sweep).
BATCH = 500
MAX_ROUNDS = 20


def queue_deadline(job: Job, default_seconds: int) -> datetime:
    return _deadline(job.created_at, job.queue_timeout_seconds, default_seconds)


def _deadline(created_at: datetime, queue_timeout_seconds: int | None, default_seconds: int) -> datetime:
    return created_at + timedelta(seconds=queue_timeout_seconds or default_seconds)


def expired(job: Job | None, now: datetime, default_seconds: int) -> bool:
    """A job that never started and is still queued past its queue deadline (retries are not counted)."""
    return job is not None and _expired(job.state, job.attempts, job.created_at, job.queue_timeout_seconds, now,
                                        default_seconds)


def _expired(state: JobState, attempts: int, created_at: datetime, queue_timeout_seconds: int | None,
             now: datetime, default_seconds: int) -> bool:
    return (state is JobState.QUEUED and attempts == 0
            and now >= _deadline(created_at, queue_timeout_seconds, default_seconds))


# The record fields `expired` reads: the sweep reads these, not whole records (the workflow can be large, and
# the API sweeps every queued job every few seconds).
SWEEP_FIELDS = ("state", "attempts", "created_at", "queue_timeout_seconds")


def expired_fields(row: list[bytes | None], now: datetime, default_seconds: int) -> bool | None:
    """`expired` from a record's SWEEP_FIELDS (JSON values; state None: no record), or None when a value does
    not read: then the whole record decides (and a corrupt one is quarantined)."""
    if row[0] is None:
        return False
    try:
        return _expired(*_read_row(row), now, default_seconds)
    except (ValueError, TypeError, RecursionError):
        return None


def _read_row(row: list[bytes | None]) -> tuple[JobState, int, datetime, int | None]:
    """(state, attempts, created_at, queue_timeout_seconds) from a record's SWEEP_FIELDS (a field the record
    leaves out is its default); raises ValueError, TypeError or RecursionError when a value does not read."""
    values: list[Any] = [json.loads(v) if v is not None else None for v in row]
    state, attempts, created, timeout = values
    return JobState(state), int(attempts or 0), datetime.fromisoformat(created), int(timeout) if timeout else None


def queue_timeout_error(job: Job, default_seconds: int) -> JobError:
    seconds = job.queue_timeout_seconds or default_seconds
    where = f"in pool {job.pool}" if job.pool else "on any pool"
    return JobError(code=ErrorCode.QUEUE_TIMEOUT,
                    message=f"the job could not start within its queue timeout of {seconds} s: no pod {where} "
                            "was free and able to run it",
                    details={"queueTimeoutSeconds": seconds, "pool": job.pool})


def waiting_deadline(row: list[bytes | None], default_seconds: int) -> datetime | None:
    """The queue deadline from a record's SWEEP_FIELDS while the job can still time out in the queue (queued,
    never started), else None (no record, started, or a value that does not read)."""
    if row[0] is None:
        return None
    try:
        state, attempts, created_at, timeout = _read_row(row)
    except (ValueError, TypeError, RecursionError):
        return None
    return _deadline(created_at, timeout, default_seconds) if state is JobState.QUEUED and attempts == 0 else None


def sweep_queue_timeouts(dispatcher: Dispatcher, default_seconds: int, now: datetime | None = None,
                         full: bool = False) -> list[str]:
    """Fail every queued job (in its RQ queue or parked for a pool with no healthy endpoint) past its queue
    deadline; returns their ids.

    The jobs to look at come from the queue-timeout index (`Keys.queue_deadlines`: the submit adds each job with
    the earliest its deadline can be, a claim or a cancel takes it out), so a sweep reads only the jobs due by
    then, not every queued id: with tens of thousands queued, reading them all every few seconds was most of
    the API's background CPU and held Redis for milliseconds each time. A due entry is checked against the
    record: the job fails, or (still waiting, deadline not reached under this server's default) its entry moves
    to that deadline, or (started, cancelled, gone) it leaves the index.
    `full`: read every queued job instead (and index each one still waiting): at a process's first sweep, for
    jobs queued before the index existed or whose entry was lost."""
    now = now or utcnow()
    if full:
        ids = [i for p in PRIORITIES for i in dispatcher.queue(p).get_job_ids()] + dispatcher.scheduler.parked_ids()
        return [job_id for start in range(0, len(ids), BATCH)
                for job_id in _sweep(dispatcher, ids[start:start + BATCH], default_seconds, now, full=True)]
    failed: list[str] = []
    for _ in range(MAX_ROUNDS):
        due = [as_text(i) for i in dispatcher.conn.zrangebyscore(dispatcher.keys.queue_deadlines, "-inf",
                                                                  now.timestamp(), start=0, num=BATCH)]
        if not due:
            break
        failed += _sweep(dispatcher, due, default_seconds, now, full=False)
    return failed


def _sweep(dispatcher: Dispatcher, chunk: list[str], default_seconds: int, now: datetime, full: bool) -> list[str]:
    """Decide on these jobs from their SWEEP_FIELDS (the whole record where those do not read), fail the expired
    ones, and write each job's index entry: its deadline while it waits, none once it no longer does."""
    conn = dispatcher.conn
    with conn.pipeline(transaction=False) as pipe:
        for job_id in chunk:
            pipe.hmget(dispatcher.keys.job(job_id), SWEEP_FIELDS)
        rows = pipe.execute()
    verdicts = {job_id: expired_fields(row, now, default_seconds) for job_id, row in zip(chunk, rows, strict=True)}
    unclear = [i for i, v in verdicts.items() if v is None]
    for job_id, job in zip(unclear, dispatcher.repo.get_many(unclear), strict=True):
        verdicts[job_id] = expired(job, now, default_seconds)
    failed = [job_id for job_id in chunk if verdicts[job_id]
              and _fail_if_still_due(dispatcher, job_id, default_seconds, now)]
    waiting = {job_id: deadline for job_id, row in zip(chunk, rows, strict=True)
               if not verdicts[job_id] and (deadline := waiting_deadline(row, default_seconds)) is not None}
    with conn.pipeline(transaction=False) as pipe:
        if waiting:
            pipe.zadd(dispatcher.keys.queue_deadlines, {i: d.timestamp() for i, d in waiting.items()})
        done = [i for i in chunk if i not in waiting]
        if done and not full:
            pipe.zrem(dispatcher.keys.queue_deadlines, *done)
        pipe.execute()
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
