"""The RQ worker that takes a job off the queue only together with a free pod for it."""

from __future__ import annotations

import logging
import time
from typing import Any

from rq import Queue, Worker
from rq.exceptions import NoSuchJobError
from rq.job import Job as RQJob
from rq.worker import WorkerStatus

from comfyfleet.dispatch.rqconf import SERIALIZER
from comfyfleet.dispatch.service import Dispatcher
from comfyfleet.keys import Keys
from comfyfleet.observability import hooks
from comfyfleet.settings import DispatchSettings

log = logging.getLogger(__name__)

# Idle workers re-check capacity at least this often even without a wake-up (pods turning healthy,
# retries scheduled by RQ's scheduler, leases that expired) — cheap: one lock + a few Redis reads.
IDLE_RECHECK_SECONDS = 1.0


class CapacityWorker(Worker):
    """An RQ Worker whose dequeue step is the capacity-aware scheduler's claim."""

    def __init__(self, *args: Any, dispatch_settings: DispatchSettings | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.scheduler_ = Dispatcher(self.connection, dispatch_settings or DispatchSettings()).scheduler

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[RQJob, Queue] | None:
        self.set_state(WorkerStatus.IDLE)
        self.procline("Waiting for a job and a free ComfyUI pod")
        started = time.monotonic()
        while True:
            self.heartbeat()
            if self.should_run_maintenance_tasks:
                self.run_maintenance_tasks()
            claim = self.scheduler_.claim()
            if claim is not None:
                try:
                    job = RQJob.fetch(claim.job_id, connection=self.connection, serializer=SERIALIZER)
                except NoSuchJobError:
                    log.warning("claimed job %s has no RQ record; releasing its pod", claim.job_id)
                    self.scheduler_.registry.release_lease(claim.endpoint_id, claim.job_id)
                    continue
                queue = Queue(claim.queue_name, connection=self.connection, serializer=SERIALIZER)
                log.info("job %s -> %s (from %s)", claim.job_id, claim.endpoint_id, claim.queue_name)
                self.heartbeat()
                return job, queue
            idle_for = time.monotonic() - started
            if timeout is None:  # burst mode: nothing runnable now means done
                return None
            if max_idle_time is not None and idle_for >= max_idle_time:
                return None
            self.scheduler_.wait_for_wake(IDLE_RECHECK_SECONDS)


def run_worker(settings: DispatchSettings, burst: bool = False, name: str | None = None) -> None:
    """Run one capacity-aware RQ worker on all priority queues (highest first) until stopped."""
    import redis

    # Import the job function's module (ComfyUI client, httpx, websockets...) and warm the client up once here:
    # every work horse is a fork of this process, so it starts with all of it loaded instead of paying ~0.6 s
    # of imports and TLS setup per job.
    import comfyfleet.dispatch.runner  # noqa: F401
    from comfyfleet.comfy.client import warm_up

    warm_up()

    conn = redis.Redis.from_url(settings.redis_url)
    hooks.start_worker_observability(settings, conn)  # HOOK(observability): relay sink, /metrics, traces
    keys = Keys(settings.redis_prefix)
    queues = [Queue(n, connection=conn, serializer=SERIALIZER) for n in keys.queue_names()]
    worker = CapacityWorker(queues, connection=conn, serializer=SERIALIZER, name=name, dispatch_settings=settings)
    # Maintenance (abandoned-job cleanup) every 15 s instead of RQ's 10 min: a dead worker's job should
    # be retried within seconds of its lease expiring, not minutes.
    worker.maintenance_interval = 15
    # RQ declares a job abandoned job_monitoring_interval + 60 s after its worker's last heartbeat; 5 s instead
    # of RQ's 30 s gets a dead worker's job retried about a minute after the worker died.
    worker.job_monitoring_interval = 5
    worker.work(burst=burst, with_scheduler=True, logging_level=settings.log_level)
