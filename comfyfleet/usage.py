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
from comfyfleet.store.jobrepo import JobRepo

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


# Count one attempt of a job: the attempt's seconds set once (HSETNX: a second call for the same attempt counts
# nothing), added to the job record's gpu_seconds (rounded to ms like every other figure), to the owner's day
# and to the pool's total (the pool of the pod that ran it, else the job's, else "default"). One script, so the
# dispatcher pays one round trip per job for accounting. KEYS: job record, attempts, day, totals.
# ARGV: seconds, retention, pod key prefix. Record fields are JSON (store/jobrepo.py).
USAGE_LUA = """
local f = redis.call('HMGET', KEYS[1], 'owner', 'attempts', 'endpoint', 'pool', 'gpu_seconds')
if not f[1] then return -1 end
local ok, owner = pcall(cjson.decode, f[1])
if not ok or type(owner) ~= 'string' then return -1 end
local attempt = math.max(tonumber(f[2]) or 1, 1)
if redis.call('HSETNX', KEYS[2], tostring(attempt), ARGV[1]) == 0 then return 0 end
redis.call('EXPIRE', KEYS[2], ARGV[2])
local total = (tonumber(f[5]) or 0) + tonumber(ARGV[1])
redis.call('HSET', KEYS[1], 'gpu_seconds', string.format('%.3f', total))
local pool = false
local okE, endpoint = pcall(cjson.decode, f[3] or 'null')
if okE and type(endpoint) == 'string' then pool = redis.call('HGET', ARGV[3] .. endpoint, 'pool') end
if not pool then
  local okP, named = pcall(cjson.decode, f[4] or 'null')
  pool = (okP and type(named) == 'string') and named or 'default'
end
redis.call('HINCRBYFLOAT', KEYS[3], owner, ARGV[1])
redis.call('HINCRBY', KEYS[3], 'attempts:' .. owner, 1)
redis.call('EXPIRE', KEYS[3], ARGV[2])
redis.call('HINCRBYFLOAT', KEYS[4], pool, ARGV[1])
return 1
"""


class UsageBook:
    """Per-user-per-day GPU-seconds in Redis: one hash per day, owner -> seconds (and owner -> attempts)."""

    def __init__(self, conn: redis.Redis, keys: Keys, retention_days: int = DEFAULT_RETENTION_DAYS):
        self.conn = conn
        self.keys = keys
        self.retention = int(timedelta(days=retention_days).total_seconds())
        self._record = conn.register_script(USAGE_LUA)

    def day_key(self, day: str) -> str:
        return f"{self.keys.prefix}:usage:day:{day}"

    def attempts_key(self, job_id: str) -> str:
        return f"{self.keys.prefix}:usage:job:{job_id}"

    @property
    def totals_key(self) -> str:
        return f"{self.keys.prefix}:usage:total"

    def record(self, *, job_id: str, seconds: float, day: str, job_key: str, pod_key_prefix: str) -> int:
        """Count the job's current attempt once, in one atomic step (USAGE_LUA): 1 counted, 0 already counted,
        -1 the job record is gone or unreadable."""
        return int(self._record(keys=[job_key, self.attempts_key(job_id), self.day_key(day), self.totals_key],
                                args=[seconds, self.retention, pod_key_prefix]))

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
        seconds = round(window[1] - window[0], 3)
        book = UsageBook(conn, keys)
        counted = await asyncio.to_thread(book.record, job_id=job_id, seconds=seconds, day=day_of(window[1]),
                                          job_key=keys.job(job_id), pod_key_prefix=keys.pod(""))
        if counted < 0:
            log.warning("job %s: usage not recorded: the job record is gone or unreadable", job_id)
        return seconds if counted > 0 else 0.0
    except (ComfyError, OSError, redis.RedisError) as exc:
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
