"""RQ's record of a dispatcher: one RQ worker with many concurrent executions, no fork.

RQ 3.0 tracks executions per worker (an execution hash, the queue's started registry, the worker's execution
index), so one registered worker can run many jobs at once, as RQ's own async-worker work (rq#2445) does.
The dispatcher drives jobs as asyncio tasks and calls this class, from one bookkeeping thread, at the points
where RQ's forking worker would: start of an execution, success, failure (with RQ's Retry), heartbeats.
So `rq info`, the started/failed/finished registries, Retry and failure callbacks stay truthful.
Only public methods of RQ's BaseWorker, Job, Execution and registries are used; rq is pinned to 3.0.x.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from rq.executions import Execution
from rq.job import Job as RQJob
from rq.job import JobStatus
from rq.queue import Queue
from rq.scheduler import RQScheduler
from rq.utils import now
from rq.worker import BaseWorker, WorkerStatus

from comfyfleet.dispatch.rqconf import SERIALIZER

log = logging.getLogger(__name__)


@dataclass
class RQRun:
    """RQ's side of one job run by the dispatcher."""

    job: RQJob
    queue: Queue
    execution: Execution


class DispatchWorker(BaseWorker):
    """Registered like any RQ worker; its jobs run as tasks of the dispatcher's event loop."""

    def execute_job(self, job: RQJob, queue: Queue) -> None:  # pragma: no cover - never forks
        raise NotImplementedError("the dispatcher runs jobs as asyncio tasks")

    def start(self) -> None:
        self.register_birth()
        self.set_state(WorkerStatus.STARTED)

    def stop(self) -> None:
        self.register_death()

    def begin(self, job_id: str, queue_name: str, adopted: bool,
              stored: dict[bytes, bytes] | None = None) -> RQRun | None:
        """Open an execution of job_id (None if RQ has no such job). An adopted job's executions by the dead
        dispatcher are closed first, so RQ's abandoned-job cleanup never retries a job that is running.
        stored: the RQ job hash when the caller has just read it (what Job.fetch would read)."""
        try:
            if stored:
                job = RQJob(job_id, connection=self.connection, serializer=self.serializer)
                job.restore(stored)
            else:
                job = RQJob.fetch(job_id, connection=self.connection, serializer=self.serializer)
        except Exception as exc:  # noqa: BLE001 - NoSuchJobError, or a payload RQ cannot read
            log.warning("job %s has no readable RQ record (%s); running it without one", job_id, exc)
            return None
        queue = Queue(job.origin or queue_name, connection=self.connection, serializer=self.serializer)
        if adopted:
            with self.connection.pipeline() as pipe:
                for old in job.get_executions():
                    old.delete(job, pipe)
                pipe.execute()
        # What RQ's prepare_execution() and the work horse's start do, in one round trip.
        with self.connection.pipeline() as pipe:
            ttl = self.get_heartbeat_ttl(job)
            execution = Execution.create(job, ttl, pipeline=pipe, worker_name=self.name)
            self.executions[execution.id] = execution
            self.set_state(WorkerStatus.BUSY, pipeline=pipe)
            job.heartbeat(now(), ttl, pipeline=pipe)
            job.prepare_for_execution(self.name, pipeline=pipe)
            pipe.execute()
        return RQRun(job, queue, execution)

    def succeed(self, run: RQRun, result: Any) -> None:
        job = run.job
        job.ended_at = now()
        job._result = result
        job._status = JobStatus.FINISHED
        self.handle_job_success(job, run.queue, run.queue.started_job_registry, run.execution)
        self._idle_if_free()

    def fail(self, run: RQRun, message: str, *, retry: bool, stopped: bool = False) -> None:
        """Record a failed execution; with retry, RQ's Retry policy queues the next attempt (its backoff goes
        through the scheduled registry); stopped marks a cancelled job STOPPED, never retried."""
        job = run.job
        job.ended_at = now()
        if retry and not job.retries_left:
            job.retries_left = 1  # our attempt count decided: RQ must not drop the retry
        if not retry:
            job.retries_left = 0
        if stopped:
            self._stopped_job_id = job.id
        self.handle_job_failure(job, run.queue, exc_string=message, execution=run.execution)
        self._idle_if_free()

    def beat(self, runs: list[RQRun], ttl: int) -> None:
        """Heartbeat the worker and every open execution in one round trip."""
        with self.connection.pipeline() as pipe:
            self.heartbeat(ttl, pipeline=pipe)
            for run in runs:
                run.execution.heartbeat(run.job.started_job_registry, ttl, pipeline=pipe)
                run.job.heartbeat(now(), ttl, pipeline=pipe, xx=True)
            pipe.execute()

    def _idle_if_free(self) -> None:
        if not self.executions:
            self.set_state(WorkerStatus.IDLE)


def make_worker(queue_names: list[str], connection: Any, name: str, job_monitoring_interval: int) -> DispatchWorker:
    return DispatchWorker(queue_names, name=name, connection=connection, serializer=SERIALIZER,
                          job_monitoring_interval=job_monitoring_interval, prepare_for_work=True)


def make_scheduler(queue_names: list[str], connection: Any, name: str) -> RQScheduler:
    """RQ's scheduler moves retries whose backoff has passed back to their queue; the dispatcher ticks it."""
    return RQScheduler(queue_names, connection=connection, serializer=SERIALIZER, name=f"{name}-scheduler")
