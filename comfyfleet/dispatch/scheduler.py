"""Capacity-aware matching of queued jobs to free pods, done atomically under one Redis lock.

A job leaves its RQ queue only together with a lease on a free pod that can run it. Queues are scanned
highest priority first and, within a queue, in FIFO order; a job whose pods are all busy is skipped only
in favour of a later job that a *different* free pod can run (backfill), so no job ever waits inside an
RQ worker while a higher-priority job waits in the queue, and adding RQ workers cannot oversubscribe GPUs.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import redis
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job as RQJob
from rq.queue import Queue

from comfyfleet.dispatch.registry import Registry
from comfyfleet.dispatch.rqconf import SERIALIZER
from comfyfleet.dispatch.selection import Candidate, Capability, capability, select_worker
from comfyfleet.jobs.model import ErrorCode, Job, JobError, JobState, utcnow
from comfyfleet.jobs.states import transition
from comfyfleet.jobs.workflow import model_needs
from comfyfleet.keys import Keys
from comfyfleet.observability import hooks
from comfyfleet.store.jobrepo import JobNotFound, JobRepo

log = logging.getLogger(__name__)

# Wake-up tokens are capped: they only need to say "something changed", not how often.
_WAKE_CAP = 64


@dataclass(frozen=True)
class Claim:
    job_id: str
    endpoint_id: str
    queue_name: str


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGTERM/SIGINT while a claim is half-made, so a stop request cannot strand a lease."""
    sigs = {signal.SIGTERM, signal.SIGINT}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class Scheduler:
    def __init__(self, conn: redis.Redis, keys: Keys, repo: JobRepo, registry: Registry,
                 lease_ttl: float, window: int):
        self.conn = conn
        self.keys = keys
        self.repo = repo
        self.registry = registry
        self.lease_ttl = lease_ttl
        self.window = window

    def lock(self) -> redis.lock.Lock:
        # 10 s lock timeout: a claim takes milliseconds; a crashed holder must not block the fleet long.
        return self.conn.lock(self.keys.schedule_lock, timeout=10, blocking_timeout=10)

    def wake(self) -> None:
        """Tell idle RQ workers that a job was queued or a pod freed."""
        with self.conn.pipeline() as pipe:
            pipe.lpush(self.keys.wake, "1")
            pipe.ltrim(self.keys.wake, 0, _WAKE_CAP - 1)
            pipe.execute()

    def wait_for_wake(self, timeout: float) -> None:
        self.conn.blpop([self.keys.wake], timeout=timeout)

    def claim(self) -> Claim | None:
        """Pick the next (job, pod) pair and lease the pod, or return None if nothing can run now."""
        with signals_deferred(), self.lock():
            candidates = self.registry.candidates()
            if not any(c.healthy and not c.busy for c in candidates):
                return None
            for queue_name in self.keys.queue_names():
                claim = self._claim_from(queue_name, candidates)
                if claim is not None:
                    return claim
        return None

    def _claim_from(self, queue_name: str, candidates: list[Candidate]) -> Claim | None:
        queue_key = Queue(queue_name, connection=self.conn, serializer=SERIALIZER).key
        ids = [i.decode() for i in self.conn.lrange(queue_key, 0, self.window - 1)]
        for job_id, job in zip(ids, self.repo.get_many(ids), strict=True):
            if job is None or job.state.is_terminal:
                self.conn.lrem(queue_key, 0, job_id)
                continue
            needs = model_needs(job.workflow)
            # A job still marked dispatched/running but back in the queue was abandoned by a dead RQ
            # worker and retried by RQ; the pod it ran on may still hold its prompt, so prefer it.
            prefer = job.worker if job.state is not JobState.QUEUED else None
            if capability(candidates, needs, job.pool) is Capability.MISSING_MODELS:
                self._fail_no_capable_worker(queue_key, job, candidates)
                continue
            pick = select_worker(candidates, needs, job.pool, prefer=prefer)
            if pick is None:
                continue
            if not self.registry.try_lease(pick.id, job_id, self.lease_ttl):
                candidates[candidates.index(pick)] = replace(pick, busy=True)
                continue
            self.conn.lrem(queue_key, 0, job_id)
            # The claim record outlives the run's own timeout, so the runner always finds its pod.
            self.conn.set(self.keys.claim(job_id), pick.id, ex=job.timeout_seconds + 3600)
            self.registry.note_assignment(pick.id, min(needs.checkpoints) if needs.checkpoints else None)
            self._mark_dispatched(job, pick.id)
            hooks.observe_claim(job, pick, utcnow())  # HOOK(observability): queue wait metric + span
            return Claim(job_id=job_id, endpoint_id=pick.id, queue_name=queue_name)
        return None

    def _mark_dispatched(self, job: Job, endpoint_id: str) -> None:
        def change(j: Job) -> Job:
            if j.state is not JobState.QUEUED:
                j = transition(j, JobState.QUEUED, error=JobError(code=ErrorCode.WORKER_LOST,
                               message="the RQ worker running this job was lost; retrying"))
            return transition(j, JobState.DISPATCHED, worker=endpoint_id)

        try:
            self.repo.update(job.id, change)
        except JobNotFound:
            log.warning("job %s vanished while being dispatched", job.id)

    def _fail_no_capable_worker(self, queue_key: str, job: Job, candidates: list[Candidate]) -> None:
        needs = model_needs(job.workflow)
        pods = [c for c in candidates if c.healthy and (job.pool is None or c.pool == job.pool)]
        have = sorted(set().union(*(c.checkpoints | c.loras for c in pods))) if pods else []
        missing = needs.missing_on(set().union(*(c.checkpoints for c in pods)), set().union(*(c.loras for c in pods)))
        error = JobError(
            code=ErrorCode.NO_CAPABLE_WORKER,
            message=f"no ready worker{' in pool ' + job.pool if job.pool else ''} has {', '.join(missing)}",
            details={"missing": missing, "available": have},
        )
        self.conn.lrem(queue_key, 0, job.id)
        failed = self.repo.update(job.id, lambda j: transition(j, JobState.FAILED, error=error))
        hooks.observe_finished(failed)  # HOOK(observability): outcome counter (failed fast, no endpoint)
        drop_rq_job(self.conn, job.id)
        log.info("job %s failed fast: %s", job.id, error.message)


def drop_rq_job(conn: redis.Redis, job_id: str) -> None:
    """Cancel the RQ side of a job that will never run (it may already be gone)."""
    try:
        RQJob.fetch(job_id, connection=conn, serializer=SERIALIZER).cancel()
    except (NoSuchJobError, InvalidJobOperation):
        pass
