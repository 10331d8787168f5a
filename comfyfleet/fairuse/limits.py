"""Per-user and per-queue limits on new jobs, checked at submit; a refusal names the limit and when to retry.

Counts live in Redis next to the jobs, so every API replica enforces the same numbers:
- jobs in flight per user: a sorted set of the user's unfinished job ids, pruned lazily (only when it
  looks full are the records read to drop finished ones);
- submissions per user per minute: a sliding window;
- queued jobs in all (the RQ queues' lengths, plus jobs parked for a pool with no endpoint) and per target
  pool (a sorted set pruned like the first). The total is counted exactly when it is near the limit or its
  estimate (the last exact count plus the admits since) is older than DEPTH_ESTIMATE_MS; in between each
  admit only counts itself up, so a busy API does not read every queue's length on every submit.
Every limit is checked, and the job's place reserved under each, by ONE script call (`admit`), so a normal
submit costs one round trip; concurrent submits never admit more than a limit, and a refusal reserves
nothing. Only when a pruned set looks full do the records get read (then the script runs once more).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis
import redis.asyncio as aioredis
from rq import Queue

from comfyfleet.dispatch.rqconf import SERIALIZER
from comfyfleet.fairuse import text
from comfyfleet.jobs.model import Job, JobState
from comfyfleet.keys import Keys
from comfyfleet.luascript import Arg, LuaScript

RATE_WINDOW_SECONDS = 60
# Suggested waits when the limit frees up at an unknown time (a job finishing, the queue draining).
IN_FLIGHT_RETRY_SECONDS = 10
QUEUE_RETRY_SECONDS = 30
# Any pool: the bucket of jobs that name no pool.
ANY_POOL = "*"
# The ids reserved in the last seconds may not be written yet (inputs uploading): a prune keeps them.
FRESH_SECONDS = 30

# How long an exact count of the queued jobs stands in for the total, counted up by each admit. The estimate
# only errs high for the admits it counts (a job that leaves the queue, or an admit refused later in the same
# call, is not taken off), so near the limit the count is exact; it errs low only by what enters the queues
# without an admit within this window (a retry put back), a few jobs against a limit of thousands.
DEPTH_ESTIMATE_MS = 1000

# Lua functions for scripts that admit a job (FairUse.admit, and the dispatcher's one-call submit).
# admit(keys, args): keys = {pool set, in-flight set, rate window, parked-pools set, the queue-depth estimate,
# then every RQ queue}; args = {now, job id, then the limits (0 = off) queue depth, per pool, in flight, per
# minute, the rate window (s), the parked-set key prefix, the estimate's lifetime (ms)} (admit_call). Returns
# nil with the job's place reserved under every limit, or {limit name, value} having reserved nothing: the
# count found (queue depth, pool, in flight) or the oldest submission's time (rate). release(keys, id) gives
# the reservation back.
ADMIT_LUA = """
local function admit(keys, args)
  local now, id = args[1], args[2]
  local depth, per_pool, in_flight, per_minute = tonumber(args[3]), tonumber(args[4]), tonumber(args[5]),
    tonumber(args[6])
  if depth > 0 then
    -- INCR answers 1 only when there is no estimate (it is set to a count + 1 >= 1 or to a count >= depth)
    local estimate = redis.call('INCR', keys[5])
    if estimate == 1 or estimate >= depth then
      local waiting = 0
      for i = 6, #keys do waiting = waiting + redis.call('LLEN', keys[i]) end
      for _, pool in ipairs(redis.call('SMEMBERS', keys[4])) do
        waiting = waiting + redis.call('ZCARD', args[8] .. pool)
      end
      if waiting >= depth then
        redis.call('SET', keys[5], waiting, 'PX', args[9])
        return {'max_queue_depth', tostring(waiting)}
      end
      redis.call('SET', keys[5], waiting + 1, 'PX', args[9])
    end
  end
  local reserved = {}
  local function refuse(name, value)
    for _, key in ipairs(reserved) do redis.call('ZREM', key, id) end
    return {name, tostring(value)}
  end
  local function reserve(key, limit)
    redis.call('ZADD', key, now, id)
    local n = redis.call('ZCARD', key)
    if n > limit then
      redis.call('ZREM', key, id)
      return n - 1
    end
    table.insert(reserved, key)
    return nil
  end
  if per_pool > 0 then
    local full = reserve(keys[1], per_pool)
    if full then return refuse('max_queue_depth_per_pool', full) end
  end
  if in_flight > 0 then
    local full = reserve(keys[2], in_flight)
    if full then return refuse('max_jobs_in_flight_per_user', full) end
  end
  if per_minute > 0 then
    redis.call('ZREMRANGEBYSCORE', keys[3], '-inf', tonumber(now) - tonumber(args[7]))
    if redis.call('ZCARD', keys[3]) >= per_minute then
      local oldest = redis.call('ZRANGE', keys[3], 0, 0, 'WITHSCORES')
      return refuse('max_submissions_per_minute_per_user', oldest[2])
    end
    redis.call('ZADD', keys[3], now, id)
    redis.call('EXPIRE', keys[3], tonumber(args[7]) + 1)
  end
  return nil
end

local function release(keys, id)
  for i = 1, 3 do redis.call('ZREM', keys[i], id) end
end
"""
_ADMIT = LuaScript(ADMIT_LUA + """
return admit(KEYS, ARGV) or {'ok', ''}
""")
# The limits whose sets are pruned lazily, and whether only queued jobs count there.
PRUNED_LIMITS = {"max_queue_depth_per_pool": True, "max_jobs_in_flight_per_user": False}


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


def refusal(limit: str, value: str, job: Job, limits: Limits, now: float) -> LimitExceeded:
    """The refusal for the admit script's answer `limit`, `value` (pure)."""
    if limit == "max_queue_depth":
        n = limits.queue_depth
        return LimitExceeded(limit, n, f"the queue is full ({n} jobs waiting, max_queue_depth); try again later",
                             QUEUE_RETRY_SECONDS)
    if limit == "max_queue_depth_per_pool":
        n = limits.queue_depth_per_pool
        return LimitExceeded(limit, n, f"pool {job.pool or '(any)'} has {n} jobs waiting "
                             f"(max_queue_depth_per_pool={n}); try again later", QUEUE_RETRY_SECONDS)
    if limit == "max_jobs_in_flight_per_user":
        n = limits.in_flight_per_user
        return LimitExceeded(limit, n, f"user {job.owner} has {n} jobs queued or running "
                             f"(max_jobs_in_flight_per_user={n}); wait for one to finish", IN_FLIGHT_RETRY_SECONDS)
    if limit == "max_submissions_per_minute_per_user":
        n = limits.submissions_per_minute
        return LimitExceeded(limit, n, f"user {job.owner} sent {n} jobs in the last minute "
                             f"(max_submissions_per_minute_per_user={n})", rate_retry_after(float(value), now))
    raise ValueError(f"unknown limit {limit!r}")


class FairUse:
    """The Redis side of the limits. `load_jobs` reads records by id (JobRepo.get_many)."""

    def __init__(self, conn: redis.Redis, keys: Keys, limits: Limits,
                 load_jobs: Callable[[list[str]], list[Job | None]]):
        self.conn = conn
        self.keys = keys
        self.limits = limits
        self.load_jobs = load_jobs
        self._queue_keys = [Queue(name, connection=conn, serializer=SERIALIZER).key for name in keys.queue_names()]

    # key names live here (not in keys.py) so the limits stay one self-contained module
    def in_flight_key(self, owner: str) -> str:
        return f"{self.keys.prefix}:fair:inflight:{owner}"

    def rate_key(self, owner: str) -> str:
        return f"{self.keys.prefix}:fair:rate:{owner}"

    def pool_key(self, pool: str | None) -> str:
        return f"{self.keys.prefix}:fair:queued:{pool or ANY_POOL}"

    @property
    def depth_key(self) -> str:
        """The estimate of the queued total (ADMIT_LUA)."""
        return f"{self.keys.prefix}:fair:depth"

    def admit(self, job: Job, now: float | None = None) -> None:
        """Reserve the job's place under every limit, or raise LimitExceeded having reserved nothing."""
        now = time.time() if now is None else now
        pruned: set[str] = set()
        while True:
            keys, args = self.admit_call(job, now)
            limit, value = (text(x) for x in _ADMIT(self.conn, keys, args))
            if limit == "ok":
                return
            self.prune(*self.next_prune(limit, value, job, now, pruned))

    async def admit_async(self, aconn: aioredis.Redis, job: Job, now: float | None = None) -> None:
        """`admit` on an asyncio client: one round trip unless a set needs pruning."""
        now = time.time() if now is None else now
        pruned: set[str] = set()
        while True:
            keys, args = self.admit_call(job, now)
            limit, value = (text(x) for x in await _ADMIT.run_async(aconn, keys, args))
            if limit == "ok":
                return
            # rare: a pruned set looks full; read its records in a thread
            await asyncio.to_thread(self.prune, *self.next_prune(limit, value, job, now, pruned))

    def admit_call(self, job: Job, now: float) -> tuple[list[str], list[Arg]]:
        """ADMIT_LUA's admit(keys, args) for this job."""
        limits = self.limits
        keys = [self.pool_key(job.pool), self.in_flight_key(job.owner), self.rate_key(job.owner),
                self.keys.parked_pools, self.depth_key, *self._queue_keys]
        args: list[Arg] = [repr(now), job.id, limits.queue_depth, limits.queue_depth_per_pool,
                           limits.in_flight_per_user, limits.submissions_per_minute, RATE_WINDOW_SECONDS,
                           self.keys.parked(""), DEPTH_ESTIMATE_MS]
        return keys, args

    def next_prune(self, limit: str, value: str, job: Job, now: float, pruned: set[str]) -> tuple[str, bool]:
        """After a refusal: the set to prune before the next try (added to `pruned`); raises LimitExceeded when
        pruning cannot help."""
        queued_only = PRUNED_LIMITS.get(limit)
        key = self.pool_key(job.pool) if queued_only else self.in_flight_key(job.owner)
        if queued_only is None or key in pruned:  # not a pruned set, or full after pruning: refused
            raise refusal(limit, value, job, self.limits, now)
        pruned.add(key)
        return key, queued_only

    def release(self, job: Job) -> None:
        """Give back a reservation for a job that was not created after all (idempotent repeat, failure)."""
        with self.conn.pipeline() as pipe:
            for key in self._release_keys(job):
                pipe.zrem(key, job.id)
            pipe.execute()

    async def release_async(self, aconn: aioredis.Redis, job: Job) -> None:
        async with aconn.pipeline() as pipe:
            for key in self._release_keys(job):
                pipe.zrem(key, job.id)
            await pipe.execute()

    def _release_keys(self, job: Job) -> tuple[str, str, str]:
        return self.pool_key(job.pool), self.in_flight_key(job.owner), self.rate_key(job.owner)

    def queued_total(self) -> int:
        """Jobs waiting: in the RQ queues, plus those parked for a pool with no healthy endpoint."""
        parked_pools = [text(p) for p in self.conn.smembers(self.keys.parked_pools)]
        with self.conn.pipeline(transaction=False) as pipe:
            for key in self._queue_keys:
                pipe.llen(key)
            for pool in parked_pools:
                pipe.zcard(self.keys.parked(pool))
            return sum(int(n) for n in pipe.execute())

    def in_flight(self, owner: str) -> int:
        key = self.in_flight_key(owner)
        self.prune(key, queued_only=False)
        return int(self.conn.zcard(key))

    def prune(self, key: str, queued_only: bool) -> int:
        """Drop ids whose jobs no longer count; returns how many remain."""
        ids = [text(i) for i in self.conn.zrange(key, 0, -1)]
        # Reserved but not yet written jobs read as missing: keep the newest few seconds' ids.
        fresh = {text(i) for i in self.conn.zrangebyscore(key, time.time() - FRESH_SECONDS, "+inf")}
        stale = [i for i, job in zip(ids, self._load(ids), strict=True)
                 if (job is None and i not in fresh) or (job is not None and not still_counts(job, queued_only))]
        if stale:
            self.conn.zrem(key, *stale)
        return len(ids) - len(stale)

    def _load(self, ids: list[str]) -> list[Job | None]:
        if not ids:
            return []
        return self.load_jobs(ids)
