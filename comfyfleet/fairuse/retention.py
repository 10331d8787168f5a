"""Forget finished jobs: their records, their RQ entries and their stored outputs and inputs."""

from __future__ import annotations

import logging
from datetime import datetime

from rq.registry import FailedJobRegistry

from comfyfleet.dispatch.service import Dispatcher
from comfyfleet.jobs.model import Job
from comfyfleet.keys import PRIORITIES
from comfyfleet.store.outputs import OutputStore, StorageError

log = logging.getLogger(__name__)


def forgettable(job: Job | None, older_than: datetime | None) -> bool:
    """A finished job whose end (not its creation) is before older_than (pure)."""
    if job is None or not job.state.is_terminal:
        return False
    if older_than is None:
        return True
    finished = job.finished_at or job.updated_at
    return finished < older_than


def clean_finished(dispatcher: Dispatcher, store: OutputStore, older_than: datetime | None) -> int:
    """Forget finished jobs that ended before older_than (all finished jobs when None); returns how many."""
    removed: list[str] = []
    # A job that ended before older_than was created before it too: the creation index narrows the scan.
    for job_id in dispatcher.repo.all_job_ids(older_than.timestamp() if older_than else None):
        job = dispatcher.repo.get(job_id)
        if job is None:
            dispatcher.conn.zrem(dispatcher.keys.all_jobs, job_id)
            continue
        if not forgettable(job, older_than):
            continue
        try:
            store.delete_job(job)
        except (StorageError, OSError) as exc:
            log.warning("clean: outputs of job %s not deleted, keeping its record: %s", job_id, exc)
            continue
        dispatcher.repo.delete(job)
        removed.append(job_id)
    gone = set(removed)
    for p in PRIORITIES:
        registry = FailedJobRegistry(queue=dispatcher.queue(p))
        for rq_id in registry.get_job_ids():
            if rq_id in gone or dispatcher.repo.get(rq_id) is None:
                registry.remove(rq_id, delete_job=True)
    return len(removed)
