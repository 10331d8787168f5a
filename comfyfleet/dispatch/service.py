"""The dispatch front: put jobs on the priority queues, cancel them, and report queue figures.

Shared by the API and the operator, so jobs from both take the same path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import redis
from rq import Callback, Queue
from rq.job import Job as RQJob
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

from comfyfleet.dispatch.registry import Registry
from comfyfleet.dispatch.rqconf import (
    HARD_TIMEOUT_MARGIN_SECONDS,
    ON_FAILURE,
    RUN_JOB,
    SERIALIZER,
    retry_policy,
)
from comfyfleet.dispatch.scheduler import Scheduler, drop_rq_job, signals_deferred
from comfyfleet.dispatch.submission import SUBMIT, RQJobShapes, parse_result, submit_call
from comfyfleet.fairuse.limits import FairUse
from comfyfleet.jobs.model import ErrorCode, Job, JobError, JobState
from comfyfleet.jobs.states import InvalidTransition, transition
from comfyfleet.keys import PRIORITIES, Keys
from comfyfleet.observability import hooks
from comfyfleet.redisbatch import Commands
from comfyfleet.settings import DispatchSettings
from comfyfleet.store.jobrepo import JobRepo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueueStats:
    waiting: int
    active: int
    retrying: int
    completed: int
    failed: int
    cancelled: int
    created: int
    waiting_by_priority: dict[int, int]


def request_cancel(job: Job) -> Job:
    """Flag a dispatched or running job for its runner to cancel; a job that just finished stays as it is."""
    if job.state.is_terminal:
        raise InvalidTransition(job.state, JobState.CANCELLED)
    return job.model_copy(update={"cancel_requested": True})


class Dispatcher:
    def __init__(self, conn: redis.Redis, settings: DispatchSettings):
        self.conn = conn
        self.settings = settings
        self.keys = Keys(settings.redis_prefix)
        self.repo = JobRepo(conn, self.keys, settings.result_ttl_seconds, track_dirty=settings.firestore_enabled)
        self.registry = Registry(conn, self.keys)
        self.scheduler = Scheduler(conn, self.keys, self.repo, self.registry,
                                   lease_ttl=settings.lease_ttl_seconds, window=settings.schedule_window)
        self.rq_shapes = RQJobShapes(self.rq_job, self.queue)

    def queue(self, priority: int) -> Queue:
        return Queue(self.keys.queue_name(priority), connection=self.conn, serializer=SERIALIZER)

    def submit(self, job: Job, fair: FairUse | None = None) -> tuple[Job, bool]:
        """Record the job and queue it; an idempotent repeat returns the first job (created=False).

        One atomic Redis call (dispatch/submission.py): with `fair`, the fair-use admit first (raises
        LimitExceeded having written nothing), then the record and its `state` event, the RQ job and its queue
        entry, the scheduler's wake-up."""
        job = hooks.observe_submit(job)  # HOOK(observability): trace context on the record, log fields
        now, pruned = time.time(), set[str]()
        while True:
            keys, args = submit_call(job, self.repo, self.keys, self.rq_shapes, fair, now)
            result = parse_result(SUBMIT(self.conn, keys, args))
            if result.outcome == "refused":
                assert fair is not None, "only admit refuses"
                fair.prune(*fair.next_prune(result.limit, result.value, job, now, pruned))
                continue
            if result.outcome == "existing":
                existing = self.repo.get(result.job_id)
                if existing is None:  # it expired just now: its key no longer holds
                    continue
                return existing, False
            return self._queued(job), True

    async def submit_async(self, aconn: Commands, job: Job, fair: FairUse | None = None) -> tuple[Job, bool]:
        """`submit` on an asyncio client or a CommandBatch (the API's): the same single call, no thread."""
        job = hooks.observe_submit(job)  # HOOK(observability): in the request's own task context
        now, pruned = time.time(), set[str]()
        while True:
            keys, args = submit_call(job, self.repo, self.keys, self.rq_shapes, fair, now)
            result = parse_result(await SUBMIT.run_async(aconn, keys, args))
            if result.outcome == "refused":  # rare: a set looks full; read its records (or raise LimitExceeded)
                assert fair is not None, "only admit refuses"
                await asyncio.to_thread(fair.prune, *fair.next_prune(result.limit, result.value, job, now, pruned))
                continue
            if result.outcome == "existing":
                existing = await asyncio.to_thread(self.repo.get, result.job_id)
                if existing is None:
                    continue
                return existing, False
            return self._queued(job), True

    def _queued(self, job: Job) -> Job:
        log.info("queued job %s (owner %s, priority %s)", job.id, job.owner, job.priority)
        return job

    def rq_job(self, job: Job) -> RQJob:
        """The RQ job for a stored record (not yet written): what every enqueue states."""
        return self.queue(job.priority).create_job(
            RUN_JOB,
            args=(job.id,),
            job_id=job.id,
            timeout=job.timeout_seconds + HARD_TIMEOUT_MARGIN_SECONDS,
            result_ttl=self.settings.result_ttl_seconds,
            failure_ttl=self.settings.result_ttl_seconds,
            ttl=None,  # a queued job waits as long as it takes for capacity
            retry=retry_policy(job.max_attempts, self.settings.retry_backoff_seconds),
            on_failure=Callback(ON_FAILURE),
            description=f"comfyfleet job {job.id} for {job.owner}",
        )

    def enqueue(self, job: Job) -> None:
        """Put the RQ job for a stored record on the queue of its priority, through RQ itself."""
        self.queue(job.priority).enqueue_job(self.rq_job(job))

    def cancel(self, job_id: str) -> Job:
        """Cancel a job: a queued one never runs; a running one is interrupted on its pod by its runner.

        Raises JobNotFound, or InvalidTransition when the job already finished.
        """
        with signals_deferred(), self.scheduler.lock():
            job = self.repo.require(job_id)
            if job.state.is_terminal:
                raise InvalidTransition(job.state, JobState.CANCELLED)
            if job.state is JobState.QUEUED:
                self.scheduler.unqueue(job_id, job.priority, job.pool)
                drop_rq_job(self.conn, job_id)
                error = JobError(code=ErrorCode.CANCELLED, message="cancelled while queued")
                cancelled = self.repo.update(job_id, lambda j: transition(j, JobState.CANCELLED, error=error))
                hooks.observe_finished(cancelled)  # HOOK(observability): cancels/outcomes counters
                return cancelled
            # Dispatched or running: its dispatcher hears this at once, interrupts the pod and finishes the job.
            job = self.repo.update(job_id, request_cancel)
        self.conn.publish(self.keys.cancel, job_id)
        return job

    def stats(self) -> QueueStats:
        by_priority = {p: self.queue(p).count for p in PRIORITIES}
        parked = self.scheduler.parked_ids()
        for info in self.repo.compact_many(parked):
            if info is not None and "corrupt" not in info:
                p = int(info.get("priority") or 5)
                by_priority[p] = by_priority.get(p, 0) + 1
        active = sum(StartedJobRegistry(queue=self.queue(p)).count for p in PRIORITIES)
        retrying = sum(int(ScheduledJobRegistry(queue=self.queue(p)).count) for p in PRIORITIES)
        counters = self.repo.counters()
        return QueueStats(
            waiting=sum(by_priority.values()),
            active=active,
            retrying=retrying,
            completed=counters.get(JobState.SUCCEEDED.value, 0),
            failed=counters.get(JobState.FAILED.value, 0),
            cancelled=counters.get(JobState.CANCELLED.value, 0),
            created=counters.get("created", 0),
            waiting_by_priority=by_priority,
        )

    def queued_by_pool(self) -> dict[str | None, int]:
        """Queued jobs per target pool (None = any pool), for the operator's autoscaler."""
        counts: dict[str | None, int] = {}
        ids = [i for p in PRIORITIES for i in self.queue(p).get_job_ids()] + self.scheduler.parked_ids()
        for info in self.repo.compact_many(ids):
            if info is not None and "corrupt" not in info and not JobState(info["state"]).is_terminal:
                counts[info.get("pool")] = counts.get(info.get("pool"), 0) + 1
        return counts

    def clean(self, older_than: float | None = None) -> int:
        """Forget finished jobs (records, RQ failed registry entries); returns how many were removed."""
        removed = 0
        for job_id in self.repo.all_job_ids(older_than):
            job = self.repo.get(job_id)
            if job is None:
                self.conn.zrem(self.keys.all_jobs, job_id)
                continue
            if job.state.is_terminal:
                self.repo.delete(job)
                removed += 1
        for p in PRIORITIES:
            registry = FailedJobRegistry(queue=self.queue(p))
            for rq_id in registry.get_job_ids():
                registry.remove(rq_id, delete_job=True)
        return removed
