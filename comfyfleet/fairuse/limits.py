"""Per-user and per-queue limits on new jobs, checked at submit; a refusal names the limit and when to retry.

Counts live in Redis next to the jobs, so every API replica enforces the same numbers:
- jobs in flight per user: a sorted set of the user's unfinished job ids, pruned lazily (only when it
  looks full are the records read to drop finished ones), so a normal submit costs two commands;
- submissions per user per minute: a sliding window, one atomic script;
- queued jobs in all (the RQ queues' lengths) and per target pool (a sorted set pruned like the first).
A slot is reserved before it is counted, so concurrent submits never admit more than the limit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis
from rq import Queue

from comfyfleet.dispatch.rqconf import SERIALIZER
from comfyfleet.fairuse import text
from comfyfleet.jobs.model import Job, JobState
from comfyfleet.keys import Keys

RATE_WINDOW_SECONDS = 60
# Suggested waits when the limit frees up at an unknown time (a job finishing, the queue draining).
IN_FLIGHT_RETRY_SECONDS = 10
QUEUE_RETRY_SECONDS = 30
# Any pool: the bucket of jobs that name no pool.
ANY_POOL = "*"

# KEYS[1] window set; ARGV now, window, limit, member. Returns {1, 0} if admitted, else {0, oldest score}.
_RATE = """
redis.call('zremrangebyscore', KEYS[1], '-inf', tonumber(ARGV[1]) - tonumber(ARGV[2]))
if redis.call('zcard', KEYS[1]) >= tonumber(ARGV[3]) then
  local oldest = redis.call('zrange', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, oldest[2]}
end
redis.call('zadd', KEYS[1], ARGV[1], ARGV[4])
redis.call('expire', KEYS[1], tonumber(ARGV[2]) + 1)
return {1, '0'}
"""


@dataclass(frozen=True)
class Limits:
    """0 turns a limit off."""

    in_flight_per_user: int = 0
    submissions_per_minute: int = 0
    queue_depth: int = 0
    queue_depth_per_pool: int = 0


class LimitExceeded(Exception):
    """A submit refused by a limit: `limit` is the setting's name, retry_after a wait in whole seconds."""

    def __init__(self, limit: str, value: int, message: str, retry_after: int):
        super().__init__(message)
        self.limit = limit
        self.value = value
        self.retry_after = max(1, retry_after)


def rate_retry_after(oldest: float, now: float, window: float = RATE_WINDOW_SECONDS) -> int:
    """Seconds until the oldest submission in the window leaves it (pure)."""
    return max(1, math.ceil(oldest + window - now))


def still_counts(job: Job | None, queued_only: bool) -> bool:
    """Whether a job id in a counting set still counts: unfinished (and, for queue depth, not yet started)."""
    if job is None or job.state.is_terminal:
        return False
    return job.state is JobState.QUEUED if queued_only else True


class FairUse:
    """The Redis side of the limits. `load_jobs` reads records by id (JobRepo.get_many)."""

    def __init__(self, conn: redis.Redis, keys: Keys, limits: Limits,
                 load_jobs: Callable[[list[str]], list[Job | None]]):
        self.conn = conn
        self.keys = keys
        self.limits = limits
        self.load_jobs = load_jobs
        self._rate = conn.register_script(_RATE)

    # key names live here (not in keys.py) so the limits stay one self-contained module
    def in_flight_key(self, owner: str) -> str:
        return f"{self.keys.prefix}:fair:inflight:{owner}"

    def rate_key(self, owner: str) -> str:
        return f"{self.keys.prefix}:fair:rate:{owner}"

    def pool_key(self, pool: str | None) -> str:
        return f"{self.keys.prefix}:fair:queued:{pool or ANY_POOL}"

    def admit(self, job: Job, now: float | None = None) -> None:
        """Reserve the job's place under every limit, or raise LimitExceeded having reserved nothing."""
        now = time.time() if now is None else now
        limits = self.limits
        if limits.queue_depth and self.queued_total() >= limits.queue_depth:
            raise LimitExceeded("max_queue_depth", limits.queue_depth,
                                f"the queue is full ({limits.queue_depth} jobs waiting, max_queue_depth); "
                                "try again later", QUEUE_RETRY_SECONDS)
        reserved: list[str] = []
        try:
            if limits.queue_depth_per_pool:
                key = self.pool_key(job.pool)
                self._reserve(key, job, limits.queue_depth_per_pool, queued_only=True, now=now)
                reserved.append(key)
            if limits.in_flight_per_user:
                key = self.in_flight_key(job.owner)
                self._reserve(key, job, limits.in_flight_per_user, queued_only=False, now=now)
                reserved.append(key)
            if limits.submissions_per_minute:
                admitted, oldest = self._rate(keys=[self.rate_key(job.owner)],
                                              args=[now, RATE_WINDOW_SECONDS, limits.submissions_per_minute, job.id])
                if not int(admitted):
                    n = limits.submissions_per_minute
                    raise LimitExceeded("max_submissions_per_minute_per_user", n,
                                        f"user {job.owner} sent {n} jobs in the last minute "
                                        f"(max_submissions_per_minute_per_user={n})",
                                        rate_retry_after(float(oldest), now))
        except BaseException:
            for key in reserved:
                self.conn.zrem(key, job.id)
            raise

    def release(self, job: Job) -> None:
        """Give back a reservation for a job that was not created after all (idempotent repeat, failure)."""
        with self.conn.pipeline() as pipe:
            pipe.zrem(self.in_flight_key(job.owner), job.id)
            pipe.zrem(self.pool_key(job.pool), job.id)
            pipe.zrem(self.rate_key(job.owner), job.id)
            pipe.execute()

    def queued_total(self) -> int:
        """Jobs waiting: in the RQ queues, plus those parked for a pool with no healthy endpoint."""
        parked_pools = [text(p) for p in self.conn.smembers(self.keys.parked_pools)]
        with self.conn.pipeline(transaction=False) as pipe:
            for name in self.keys.queue_names():
                pipe.llen(Queue(name, connection=self.conn, serializer=SERIALIZER).key)
            for pool in parked_pools:
                pipe.zcard(self.keys.parked(pool))
            return sum(int(n) for n in pipe.execute())

    def in_flight(self, owner: str) -> int:
        key = self.in_flight_key(owner)
        self._prune(key, queued_only=False)
        return int(self.conn.zcard(key))

    def _reserve(self, key: str, job: Job, limit: int, *, queued_only: bool, now: float) -> None:
        with self.conn.pipeline() as pipe:
            pipe.zadd(key, {job.id: now})
            pipe.zcard(key)
            _, count = pipe.execute()
        if count > limit:
            count = self._prune(key, queued_only)
        if count > limit:
            self.conn.zrem(key, job.id)
            if queued_only:
                raise LimitExceeded("max_queue_depth_per_pool", limit,
                                    f"pool {job.pool or '(any)'} has {limit} jobs waiting "
                                    f"(max_queue_depth_per_pool={limit}); try again later", QUEUE_RETRY_SECONDS)
            raise LimitExceeded("max_jobs_in_flight_per_user", limit,
                                f"user {job.owner} has {limit} jobs queued or running "
                                f"(max_jobs_in_flight_per_user={limit}); wait for one to finish",
                                IN_FLIGHT_RETRY_SECONDS)

    def _prune(self, key: str, queued_only: bool) -> int:
        """Drop ids whose jobs no longer count; returns how many remain."""
        ids = [text(i) for i in self.conn.zrange(key, 0, -1)]
        # Reserved but not yet written jobs read as missing: keep the newest few seconds' ids.
        fresh = {text(i) for i in self.conn.zrangebyscore(key, time.time() - 30, "+inf")}
        stale = [i for i, job in zip(ids, self._load(ids), strict=True)
                 if (job is None and i not in fresh) or (job is not None and not still_counts(job, queued_only))]
        if stale:
            self.conn.zrem(key, *stale)
        return len(ids) - len(stale)

    def _load(self, ids: list[str]) -> list[Job | None]:
        if not ids:
            return []
        return self.load_jobs(ids)
