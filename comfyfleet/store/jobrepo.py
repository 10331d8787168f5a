"""Job records in Redis: the live source of truth for every job's state, progress and outputs."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import redis

from comfyfleet.jobs.model import Job, JobState
from comfyfleet.keys import Keys
from comfyfleet.webhooks.outbox import queue_webhooks  # HOOK(integrations)

log = logging.getLogger(__name__)


class JobNotFound(LookupError):
    def __init__(self, job_id: str):
        super().__init__(f"no job {job_id!r}")
        self.job_id = job_id


class JobRepo:
    """Reads and writes Job records; every change is published on the job's events channel."""

    def __init__(self, conn: redis.Redis, keys: Keys, finished_ttl_seconds: int = 7 * 24 * 3600,
                 track_dirty: bool = False):
        self.conn = conn
        self.keys = keys
        self.finished_ttl = finished_ttl_seconds
        # With a durable mirror (Firestore) on, every write also marks the job dirty for the write-behind.
        self.track_dirty = track_dirty

    def create(self, job: Job) -> tuple[Job, bool]:
        """Store a new job; with an idempotency key, return the existing job instead (created=False)."""
        if job.idempotency_key:
            idem = self.keys.idempotency(job.owner, job.idempotency_key)
            if not self.conn.set(idem, job.id, nx=True, ex=self.finished_ttl):
                existing_id = self.conn.get(idem)
                existing = self.get(existing_id.decode()) if existing_id else None
                if existing is not None:
                    return existing, False
                self.conn.set(idem, job.id, ex=self.finished_ttl)
        score = job.created_at.timestamp()
        with self.conn.pipeline() as pipe:
            pipe.set(self.keys.job(job.id), job.model_dump_json())
            pipe.zadd(self.keys.owner_jobs(job.owner), {job.id: score})
            pipe.zadd(self.keys.all_jobs, {job.id: score})
            pipe.hincrby(self.keys.stats, "created", 1)
            if self.track_dirty:
                pipe.sadd(self.keys.dirty, job.id)
            pipe.execute()
        self._publish(job, "state")
        return job, True

    def get(self, job_id: str) -> Job | None:
        raw = self.conn.get(self.keys.job(job_id))
        return Job.model_validate_json(raw) if raw else None

    def require(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    def get_many(self, job_ids: list[str]) -> list[Job | None]:
        if not job_ids:
            return []
        raws = self.conn.mget([self.keys.job(j) for j in job_ids])
        return [Job.model_validate_json(r) if r else None for r in raws]

    def update(self, job_id: str, change: Callable[[Job], Job], event: str = "state") -> Job:
        """Apply change to the stored job atomically (optimistic WATCH loop) and publish the result.

        change may raise (e.g. InvalidTransition); then nothing is written.
        """
        key = self.keys.job(job_id)
        with self.conn.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    if raw is None:
                        raise JobNotFound(job_id)
                    before = Job.model_validate_json(raw)
                    after = change(before)
                    pipe.multi()
                    after = queue_webhooks(pipe, self.keys, before, after)  # HOOK(integrations): webhook outbox
                    if after.state.is_terminal:
                        pipe.set(key, after.model_dump_json(), ex=self.finished_ttl)
                        if not before.state.is_terminal:
                            pipe.hincrby(self.keys.stats, after.state.value, 1)
                    else:
                        pipe.set(key, after.model_dump_json())
                    if self.track_dirty and event == "state":
                        pipe.sadd(self.keys.dirty, job_id)
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        self._publish(after, event)
        return after

    def owner_job_ids(self, owner: str, limit: int, before: float | None = None) -> list[str]:
        """Newest first; `before` is a creation timestamp cursor."""
        high = f"({before}" if before is not None else "+inf"
        ids = self.conn.zrevrangebyscore(self.keys.owner_jobs(owner), high, "-inf", start=0, num=limit)
        return [i.decode() for i in ids]

    def counters(self) -> dict[str, int]:
        raw = self.conn.hgetall(self.keys.stats)
        return {k.decode(): int(v) for k, v in raw.items()}

    def delete(self, job: Job) -> None:
        with self.conn.pipeline() as pipe:
            pipe.delete(self.keys.job(job.id))
            pipe.zrem(self.keys.owner_jobs(job.owner), job.id)
            pipe.zrem(self.keys.all_jobs, job.id)
            pipe.execute()

    def all_job_ids(self, older_than: float | None = None) -> list[str]:
        high = older_than if older_than is not None else "+inf"
        return [i.decode() for i in self.conn.zrangebyscore(self.keys.all_jobs, "-inf", high)]

    def publish_progress(self, job: Job) -> None:
        self._publish(job, "progress")

    def _publish(self, job: Job, event: str) -> None:
        payload: dict[str, Any] = {"event": event, "job": json.loads(job.model_dump_json())}
        self.conn.publish(self.keys.events(job.id), json.dumps(payload))


def is_final(job: Job) -> bool:
    return job.state in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)
