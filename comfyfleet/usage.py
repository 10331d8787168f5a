"""Usage accounting: GPU-seconds per job (from the pod's own execution timestamps), per user per day.

ComfyUI's /history/{id} keeps `status.messages`: `execution_start` and one of `execution_success`,
`execution_error`, `execution_interrupted`, each with the pod's `timestamp` in milliseconds. The time
between them is what the GPU spent on the prompt, free of our queueing and network time.

Each attempt is counted once (`record_run_usage` may be called twice for one attempt, e.g. on a
cancel that also ends the run): the attempt's figure is written with HSETNX before anything is added.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import redis
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from comfyfleet.comfy.client import ComfyClient
from comfyfleet.comfy.errors import ComfyError
from comfyfleet.fairuse import text
from comfyfleet.keys import Keys
from comfyfleet.store.jobrepo import JobNotFound, JobRepo

log = logging.getLogger(__name__)

END_MESSAGES = ("execution_success", "execution_error", "execution_interrupted")
# Per-day totals are kept this long by default (usage_retention_days in the API settings).
DEFAULT_RETENTION_DAYS = 400


def execution_window(messages: Iterable[tuple[str, dict[str, Any]]]) -> tuple[float, float] | None:
    """(start, end) in epoch seconds from history status messages, or None if either is missing (pure)."""
    start = end = None
    for name, data in messages:
        stamp = data.get("timestamp") if isinstance(data, dict) else None
        if not isinstance(stamp, int | float) or isinstance(stamp, bool):
            continue
        if name == "execution_start" and start is None:
            start = stamp / 1000.0
        elif name in END_MESSAGES:
            end = stamp / 1000.0
    if start is None or end is None:
        return None
    return start, max(start, end)


def gpu_seconds(messages: Iterable[tuple[str, dict[str, Any]]]) -> float:
    """GPU time of one prompt (0.0 when the pod never started it)."""
    window = execution_window(messages)
    return round(window[1] - window[0], 3) if window else 0.0


def day_of(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, UTC).date().isoformat()


class UsageBook:
    """Per-user-per-day GPU-seconds in Redis: one hash per day, owner -> seconds (and owner -> attempts)."""

    def __init__(self, conn: redis.Redis, keys: Keys, retention_days: int = DEFAULT_RETENTION_DAYS):
        self.conn = conn
        self.keys = keys
        self.retention = int(timedelta(days=retention_days).total_seconds())

    def day_key(self, day: str) -> str:
        return f"{self.keys.prefix}:usage:day:{day}"

    def attempts_key(self, job_id: str) -> str:
        return f"{self.keys.prefix}:usage:job:{job_id}"

    @property
    def totals_key(self) -> str:
        return f"{self.keys.prefix}:usage:total"

    def record(self, *, job_id: str, attempt: int, owner: str, pool: str, seconds: float, day: str,
               repo: JobRepo) -> bool:
        """Count one attempt once; returns False when it was already counted."""
        if not self.conn.hsetnx(self.attempts_key(job_id), str(attempt), seconds):
            return False
        self.conn.expire(self.attempts_key(job_id), self.retention)
        try:
            repo.update(job_id, lambda j: j.model_copy(update={"gpu_seconds": round(j.gpu_seconds + seconds, 3)}),
                        event="progress")
        except JobNotFound:
            log.warning("usage of job %s: the record is gone; counted for %s only", job_id, owner)
        with self.conn.pipeline() as pipe:
            pipe.hincrbyfloat(self.day_key(day), owner, seconds)
            pipe.hincrby(self.day_key(day), f"attempts:{owner}", 1)
            pipe.expire(self.day_key(day), self.retention)
            pipe.hincrbyfloat(self.totals_key, pool, seconds)
            pipe.execute()
        return True

    def days(self, owner: str, last: date, count: int) -> list[dict[str, Any]]:
        """The owner's usage for `count` days ending at `last`, oldest first."""
        days = [(last - timedelta(days=n)).isoformat() for n in range(count - 1, -1, -1)]
        with self.conn.pipeline() as pipe:
            for day in days:
                pipe.hmget(self.day_key(day), owner, f"attempts:{owner}")
            rows = pipe.execute()
        return [{"date": day, "gpu_seconds": round(float(seconds or 0), 3), "attempts": int(attempts or 0)}
                for day, (seconds, attempts) in zip(days, rows, strict=True)]

    def totals(self) -> dict[str, float]:
        return {text(k): float(v) for k, v in self.conn.hgetall(self.totals_key).items()}


async def record_run_usage(client: ComfyClient, repo: JobRepo, job_id: str,
                           messages: list[tuple[str, dict[str, Any]]] | None = None) -> float:
    """Runner hook, called once a run ended on its pod (finished, failed, interrupted, timed out).

    Adds the prompt's GPU time (its /history status messages: `messages` when the run already read them, else
    read from the pod now) to the job and the owner's day. Call it before the pod's history entry is deleted.
    Never raises for pod or Redis trouble: accounting must not fail a job. Returns the seconds counted.
    """
    conn, keys = repo.conn, repo.keys
    try:
        if not messages:
            entry = await client.history(job_id)
            if entry is None:
                return 0.0
            messages = entry.messages
        window = execution_window(messages)
        if window is None:
            return 0.0
        job = await asyncio.to_thread(repo.require, job_id)
        pool = (await asyncio.to_thread(conn.hget, keys.pod(job.endpoint), "pool") if job.endpoint else None)
        seconds = round(window[1] - window[0], 3)
        book = UsageBook(conn, keys)
        counted = await asyncio.to_thread(
            lambda: book.record(job_id=job_id, attempt=max(job.attempts, 1), owner=job.owner,
                                pool=text(pool) if pool else (job.pool or "default"), seconds=seconds,
                                day=day_of(window[1]), repo=repo))
        return seconds if counted else 0.0
    except (ComfyError, OSError, redis.RedisError, JobNotFound) as exc:
        log.warning("job %s: usage not recorded: %s", job_id, exc)
        return 0.0


class UsageCollector(Collector):
    """`comfyfleet_gpu_seconds_total{pool}`: GPU time used, read from Redis at scrape time (all processes)."""

    def __init__(self, book: UsageBook):
        self.book = book

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("comfyfleet_gpu_seconds", "GPU-seconds spent on jobs (pod timestamps)",
                                     labels=["pool"])
        try:
            totals = self.book.totals()
        except redis.RedisError as exc:
            log.warning("usage totals unavailable: %s", exc)
            totals = {}
        for pool, seconds in sorted(totals.items()):
            family.add_metric([pool], seconds)
        yield family
