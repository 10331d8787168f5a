"""Capacity-aware matching of queued jobs to free endpoints, done atomically under one Redis lock.

A job leaves its RQ queue only together with a lease on a free endpoint that can run it. Queues are scanned
highest priority first and, within a queue, in FIFO order; a job whose endpoints are all busy is skipped only
in favour of a later job that a *different* free endpoint can run (backfill), so no job waits inside a
dispatcher while a higher-priority job waits in the queue, and adding dispatchers cannot oversubscribe GPUs.

One pass assigns as many (job, endpoint) pairs as the caller has free slots, in one write. What no endpoint
can ever run does not stay in the scan: a job whose models no healthy endpoint of its pool has fails at once
(`no_capable_worker`); a job for a pool with no healthy endpoint at all is parked outside the queue until one
appears (the pool may be scaling up from zero); a record that cannot be read is quarantined as failed. So a
backlog of jobs that cannot run never hides a runnable job behind it, and one bad record never stops a pass.
"""

from __future__ import annotations

import json
import logging
import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import redis
from redis.lock import Lock
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job as RQJob

from comfyfleet.dispatch.registry import Registry
from comfyfleet.dispatch.rqconf import SERIALIZER
from comfyfleet.dispatch.selection import Candidate, Capability, capability, select_endpoint
from comfyfleet.jobs.model import ErrorCode, JobError, JobState, utcnow
from comfyfleet.jobs.states import can_transition, transition
from comfyfleet.jobs.workflow import ModelNeeds
from comfyfleet.keys import PRIORITIES, Keys, as_text
from comfyfleet.observability import hooks
from comfyfleet.store.jobrepo import JobNotFound, JobRepo, needs_of

log = logging.getLogger(__name__)

# Ids read per LRANGE while scanning a queue; a pass stops early once every free endpoint is assigned.
_PAGE = 256
# Hard bound on queue entries one pass looks at per priority (cached compact records make each cheap).
_SCAN_LIMIT = 5000

# How long a claim pass waits for the lock another dispatcher holds (then it tries again on its next wake-up),
# and how often it asks meanwhile: a pass holds the lock for milliseconds.
_LOCK_WAIT_SECONDS = 5.0
_LOCK_POLL_SECONDS = 0.002
# The lock's own expiry: a claim takes milliseconds; a crashed holder must not block the fleet long.
_LOCK_TIMEOUT_SECONDS = 10
# Give the lock back only if this pass still holds it (redis-py's Lock releases the same way).
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Adopt in-flight jobs whose dispatcher stopped renewing them. KEYS: inflight zset, owner hash.
# ARGV: now, new deadline, adopter name, max count. Returns the adopted job ids.
_ADOPT = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[4]))
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], ARGV[2], id)
  redis.call('HSET', KEYS[2], id, ARGV[3])
end
return ids
"""


@dataclass(frozen=True)
class Claim:
    job_id: str
    endpoint_id: str
    queue_name: str
    # True when this dispatcher took the job over from one that died: attach to its prompt, never post twice.
    adopted: bool = False
    # Committed to the endpoint behind its running job (prefetch): its timeout starts when it starts.
    prefetched: bool = False
    # The job's record and RQ job hash as the claim's own commit left them (raw Redis hashes), so the runner
    # starts without reading them again; None when the claim did not read them (adoption).
    record: dict[bytes, bytes] | None = field(default=None, compare=False, repr=False)
    rq_record: dict[bytes, bytes] | None = field(default=None, compare=False, repr=False)


@dataclass
class _Pass:
    """What one claim pass decided, written in one transaction."""

    claims: list[Claim] = field(default_factory=list)
    checkpoints: dict[str, str | None] = field(default_factory=dict)
    requeued: list[str] = field(default_factory=list)  # abandoned records put back to QUEUED first


@dataclass
class _Opening:
    """What a claim pass read in the round trip that took the lock (read after it, so under it)."""

    token: str
    leased: dict[str, str]
    ahead: dict[str, str]
    members: set[str]
    parked_pools: set[str]
    first_pages: list[list[str]]


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGTERM/SIGINT while a claim is half-made, so a stop request cannot strand a lease."""
    sigs = {signal.SIGTERM, signal.SIGINT}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _slot(c: Candidate, leased: dict[str, str], ahead: dict[str, str]) -> Candidate:
    """A candidate as this pass sees it: free, its prefetch slot free (ahead=1), or busy."""
    if c.id not in leased:
        return replace(c, busy=False, ahead=0)
    if c.prefetch and c.id not in ahead:
        return replace(c, busy=False, ahead=1)
    return replace(c, busy=True, ahead=0)


def _needs(info: dict[str, Any]) -> ModelNeeds:
    raw = info.get("needs") or {}
    return ModelNeeds(frozenset(raw.get("checkpoints") or ()), frozenset(raw.get("loras") or ()))


class Scheduler:
    def __init__(self, conn: redis.Redis, keys: Keys, repo: JobRepo, registry: Registry,
                 lease_ttl: float, window: int):
        self.conn = conn
        self.keys = keys
        self.repo = repo
        self.registry = registry
        self.lease_ttl = lease_ttl
        self.window = window
        # Compact records of queued jobs (pool, needs, owner...): fixed once queued, so cached across passes.
        self._compact: dict[str, dict[str, Any]] = {}
        self._adopt = conn.register_script(_ADOPT)
        self._unlock = conn.register_script(_UNLOCK)
        # Figures for the dispatcher's /metrics: passes under the lock, claims made, seconds the lock was held.
        self.passes = 0
        self.claimed = 0
        self.lock_held_seconds = 0.0

    @property
    def lease_ms(self) -> int:
        """A lease outlives its in-flight deadline, so a dead dispatcher's job is adopted before its endpoint
        could be leased to another job."""
        return int(self.lease_ttl * 1500)

    def lock(self) -> Lock:
        """The claim lock, for work outside claim passes (adoption, withdrawing an endpoint, queue timeouts)."""
        return Lock(self.conn, self.keys.schedule_lock, timeout=_LOCK_TIMEOUT_SECONDS,
                    blocking_timeout=_LOCK_WAIT_SECONDS, sleep=_LOCK_POLL_SECONDS)

    def wake(self) -> None:
        """Tell dispatchers that a job was queued or an endpoint freed (coalesced by each listener)."""
        self.conn.publish(self.keys.wake, "1")

    # --- claiming ---------------------------------------------------------------------------------
    def claim(self, owner: str = "") -> Claim | None:
        """One (job, endpoint) pair, or None if nothing can run now."""
        claims = self.claim_batch(1, owner=owner)
        return claims[0] if claims else None

    def claim_batch(self, slots: int, candidates: list[Candidate] | None = None, owner: str = "") -> list[Claim]:
        """Up to `slots` (job, endpoint) pairs, each endpoint leased, each job out of its queue and DISPATCHED.

        candidates: a recent registry snapshot (health and models change slowly); leases are re-read under
        the lock, so the snapshot can never cause a double assignment. owner: the dispatcher that will run
        the jobs (only it may renew their in-flight deadlines).
        """
        if slots <= 0:
            return []
        snapshot = candidates if candidates is not None else self.registry.candidates()
        if not any(c.healthy for c in snapshot):
            return []
        with signals_deferred():
            opening = self._open_pass(snapshot)
            held_since = time.perf_counter()
            unlocked = False
            try:
                leased, ahead = opening.leased, opening.ahead
                # A snapshot may predate an endpoint's withdrawal (done under this lock): drop what is gone.
                cands = [_slot(c, leased, ahead) for c in snapshot if c.id in opening.members]
                first_pages = opening.first_pages if not self._unpark(cands, opening.parked_pools) else None
                if not any(c.healthy and not c.busy for c in cands):
                    return []
                plan = self._plan(slots, cands, first_pages)
                if plan.claims:
                    plan.claims = self._commit(plan, owner, opening.token)
                    unlocked = True
            finally:
                if not unlocked:
                    self._unlock(keys=[self.keys.schedule_lock], args=[opening.token])
                self.passes += 1
                self.lock_held_seconds += time.perf_counter() - held_since
        self.claimed += len(plan.claims)
        return plan.claims

    def _open_pass(self, snapshot: list[Candidate]) -> _Opening:
        """Take the claim lock and, in the same round trip, read what the pass decides on: leases, the
        endpoints still registered, parked pools and every queue's first page. Waits for a lock another
        dispatcher holds up to _LOCK_WAIT_SECONDS (redis LockError after that)."""
        token = uuid.uuid4().hex
        ids = [c.id for c in snapshot]
        prefetching = [c.id for c in snapshot if c.prefetch]
        names = self.keys.queue_names()
        locked = False
        while True:
            with self.conn.pipeline(transaction=False) as pipe:
                if not locked:
                    pipe.set(self.keys.schedule_lock, token, nx=True, px=_LOCK_TIMEOUT_SECONDS * 1000)
                pipe.mget([self.keys.lease(i) for i in ids])
                if prefetching:
                    pipe.mget([self.keys.lease_next(i) for i in prefetching])
                pipe.smembers(self.keys.pods)
                pipe.smembers(self.keys.parked_pools)
                for queue_name in names:
                    pipe.lrange(self.queue_key(queue_name), 0, _PAGE - 1)
                replies = pipe.execute()
            if locked or replies.pop(0):
                break
            self._wait_for_lock(token)  # held by another pass: wait for it cheaply, then read
            locked = True
        leases, *rest = replies
        nexts = rest.pop(0) if prefetching else []
        members, parked, *pages = rest
        leased = {i: as_text(v) for i, v in zip(ids, leases, strict=True) if v}
        ahead = {i: as_text(v) for i, v in zip(prefetching, nexts, strict=True) if v and i in leased}
        return _Opening(token, leased, ahead, {as_text(m) for m in members}, {as_text(p) for p in parked},
                        [[as_text(i) for i in page] for page in pages])

    def _wait_for_lock(self, token: str) -> None:
        deadline = time.monotonic() + _LOCK_WAIT_SECONDS
        while not self.conn.set(self.keys.schedule_lock, token, nx=True, px=_LOCK_TIMEOUT_SECONDS * 1000):
            if time.monotonic() >= deadline:
                raise redis.exceptions.LockError("the claim lock stayed taken; trying again on the next wake-up")
            time.sleep(_LOCK_POLL_SECONDS)

    def _plan(self, slots: int, cands: list[Candidate], first_pages: list[list[str]] | None) -> _Pass:
        plan = _Pass()
        names = self.keys.queue_names()
        if first_pages is None:
            with self.conn.pipeline(transaction=False) as pipe:  # every queue's first page in one round trip
                for queue_name in names:
                    pipe.lrange(self.queue_key(queue_name), 0, _PAGE - 1)
                first_pages = [[as_text(i) for i in page] for page in pipe.execute()]
        for priority, queue_name, first in zip(PRIORITIES, names, first_pages, strict=True):
            if not first:
                continue
            self._scan_queue(priority, queue_name, slots, cands, plan, first)
            if len(plan.claims) >= slots or not any(c.healthy and not c.busy for c in cands):
                break
        return plan

    def _scan_queue(self, priority: int, queue_name: str, slots: int, cands: list[Candidate], plan: _Pass,
                    first_page: list[str]) -> None:
        queue_key = self.queue_key(queue_name)
        blocked: set[tuple[str | None, frozenset[str], frozenset[str]]] = set()
        window_left = self.window
        start = 0
        page: list[str] | None = first_page
        while start < _SCAN_LIMIT:
            ids = page if page is not None else [as_text(i) for i in self.conn.lrange(queue_key, start,
                                                                                       start + _PAGE - 1)]
            page = None
            if not ids:
                return
            start += len(ids)
            for job_id, info in zip(ids, self._infos(ids), strict=True):
                verdict = self._consider(job_id, info, queue_key, queue_name, cands, blocked, plan)
                if verdict == "removed":
                    start -= 1  # the list shifted left under us
                elif verdict == "waits":
                    window_left -= 1
                if len(plan.claims) >= slots or window_left <= 0:
                    return
                if not any(c.healthy and not c.busy for c in cands):
                    return

    def _consider(self, job_id: str, info: dict[str, Any] | None, queue_key: str, queue_name: str,
                  cands: list[Candidate], blocked: set[tuple[str | None, frozenset[str], frozenset[str]]],
                  plan: _Pass) -> str:
        """Decide one queued job: 'claimed', 'waits' (counts against the window), 'skipped' or 'removed'."""
        if info is None:  # record gone (expired or cleaned)
            self._drop(queue_key, job_id)
            return "removed"
        if "corrupt" in info:
            self.repo.get(job_id)  # decoding quarantines it as failed
            log.error("job %s: unreadable record (%s) taken out of the queue", job_id, info["corrupt"])
            self._drop(queue_key, job_id)
            return "removed"
        state = JobState(info["state"])
        if state.is_terminal:
            self._drop(queue_key, job_id)
            return "removed"
        prefer = None
        if state is not JobState.QUEUED:
            # Back in the queue while its record says dispatched/running: RQ retried an execution it thought
            # abandoned. If a live dispatcher runs (or adopted) it, the entry is a stray; else run it again,
            # preferring the endpoint that may still hold its prompt.
            if self.conn.zscore(self.keys.inflight, job_id) is not None:
                self.conn.lrem(queue_key, 0, job_id)
                return "removed"
            prefer = info.get("endpoint")
        needs = _needs(info)
        pool = info.get("pool")
        cls = (pool, needs.checkpoints, needs.loras)
        if cls in blocked:
            return "skipped"
        able = capability(cands, needs, pool)
        if able is Capability.MISSING_MODELS:
            self._fail_no_capable_worker(queue_key, job_id, pool, needs, cands)
            return "removed"
        if able is Capability.NO_ENDPOINTS:
            if pool is not None:
                self._park(queue_key, job_id, pool)
                return "removed"
            blocked.add(cls)
            return "skipped"
        pick = select_endpoint(cands, needs, pool, prefer=prefer)
        if pick is None:
            blocked.add(cls)
            return "waits"
        # Taken: a pod with prefetch still offers its slot behind the job just given to it.
        taken = replace(pick, busy=False, ahead=1) if pick.prefetch and not pick.ahead else replace(pick, busy=True)
        cands[cands.index(pick)] = taken
        plan.claims.append(Claim(job_id=job_id, endpoint_id=pick.id, queue_name=queue_name,
                                 prefetched=bool(pick.ahead)))
        plan.checkpoints[job_id] = min(needs.checkpoints) if needs.checkpoints else None
        if state is not JobState.QUEUED:
            plan.requeued.append(job_id)
        return "claimed"

    def _infos(self, ids: list[str]) -> list[dict[str, Any] | None]:
        fresh: dict[str, dict[str, Any] | None] = {}
        missing = [i for i in ids if i not in self._compact]
        for job_id, info in zip(missing, self.repo.compact_many(missing), strict=True):
            if info is not None and "corrupt" not in info and info.get("needs") is None:
                job = self.repo.get(job_id)  # a record written before `needs` existed
                info["needs"] = needs_of(job) if job is not None else {}
            fresh[job_id] = info
            if info is not None and "corrupt" not in info and info.get("state") == JobState.QUEUED.value:
                self._compact[job_id] = info
        if len(self._compact) > 50_000:  # forget the oldest half; they are re-read on demand
            for k in list(self._compact)[:25_000]:
                del self._compact[k]
        return [fresh[i] if i in fresh else self._compact.get(i) for i in ids]

    def _commit(self, plan: _Pass, owner: str, token: str) -> list[Claim]:
        """Write the pass's claims and give the lock back, in one transaction; returns the claims with each
        job's record and RQ job hash as the commit left them."""
        for job_id in plan.requeued:
            self._requeue_abandoned(job_id)
        now = utcnow()
        stamp = time.time()
        assert can_transition(JobState.QUEUED, JobState.DISPATCHED)
        dispatched = JobState.DISPATCHED.value
        with self.conn.pipeline(transaction=True) as pipe:
            for c in plan.claims:
                job_key = self.keys.job(c.job_id)
                pipe.lrem(self.queue_key(c.queue_name), 0, c.job_id)
                lease_key = self.keys.lease_next(c.endpoint_id) if c.prefetched else self.keys.lease(c.endpoint_id)
                pipe.set(lease_key, c.job_id, px=self.lease_ms)
                pipe.set(self.keys.claim(c.job_id), c.endpoint_id, ex=24 * 3600)
                fields: dict[Any, str] = {"last_assigned_at": str(stamp)}
                if plan.checkpoints.get(c.job_id):
                    fields["last_checkpoint"] = plan.checkpoints[c.job_id] or ""
                pipe.hset(self.keys.pod(c.endpoint_id), mapping=fields)
                # The QUEUED -> DISPATCHED move of jobs/states.transition, written field by field.
                pipe.hset(job_key, mapping={"state": json.dumps(dispatched), "endpoint": json.dumps(c.endpoint_id),
                                            "dispatched_at": json.dumps(now.isoformat()),
                                            "updated_at": json.dumps(now.isoformat()), "error": "null"})
                pipe.hincrby(job_key, "attempts", 1)
                pipe.zadd(self.keys.inflight, {c.job_id: stamp + self.lease_ttl})
                pipe.zrem(self.keys.queue_deadlines, c.job_id)  # started: no queue timeout any more
                pipe.hset(self.keys.inflight_owner, c.job_id, owner)
                self._compact.pop(c.job_id, None)
            # EVAL, not the registered script: a pipeline with scripts asks SCRIPT EXISTS first (a round trip).
            pipe.eval(_UNLOCK, 1, self.keys.schedule_lock, token)
            for c in plan.claims:
                pipe.hgetall(self.keys.job(c.job_id))
                pipe.hgetall(RQJob.key_for(c.job_id))
            replies = pipe.execute()
        reads = replies[len(replies) - 2 * len(plan.claims):]
        return [replace(c, record=reads[2 * n] or None, rq_record=reads[2 * n + 1] or None)
                for n, c in enumerate(plan.claims)]

    def _requeue_abandoned(self, job_id: str) -> None:
        error = JobError(code=ErrorCode.WORKER_LOST, message="the dispatcher running this job was lost; retrying")
        try:
            self.repo.update(job_id, lambda j: transition(j, JobState.QUEUED, error=error)
                             if not j.state.is_terminal and j.state is not JobState.QUEUED else j)
        except JobNotFound:
            pass

    # --- parking ----------------------------------------------------------------------------------
    def _park(self, queue_key: str, job_id: str, pool: str) -> None:
        with self.conn.pipeline(transaction=True) as pipe:
            pipe.lrem(queue_key, 0, job_id)
            pipe.zadd(self.keys.parked(pool), {job_id: time.time()}, nx=True)
            pipe.sadd(self.keys.parked_pools, pool)
            pipe.execute()
        log.info("job %s parked: pool %s has no healthy endpoint", job_id, pool)

    def _unpark(self, cands: list[Candidate], pools: set[str]) -> bool:
        """Parked jobs of pools that have a healthy endpoint again back to their queues; True if any pool was."""
        live = {c.pool for c in cands if c.healthy}
        back = sorted(pools & live)
        for pool in back:
            ids = [as_text(i) for i in self.conn.zrange(self.keys.parked(pool), 0, -1)]
            infos = self.repo.compact_many(ids)
            with self.conn.pipeline(transaction=True) as pipe:
                # Back to the front of their queues, oldest first, as they were before parking.
                for job_id, info in reversed(list(zip(ids, infos, strict=True))):
                    if info is not None and "corrupt" not in info and info.get("state") == JobState.QUEUED.value:
                        pipe.lpush(self.queue_key(self.keys.queue_name(int(info.get("priority") or 5))), job_id)
                pipe.delete(self.keys.parked(pool))
                pipe.srem(self.keys.parked_pools, pool)
                pipe.execute()
            log.info("pool %s has a healthy endpoint again: %d parked jobs back in their queues", pool, len(ids))
        return bool(back)

    def parked_ids(self) -> list[str]:
        """Every parked job id (jobs for pools with no healthy endpoint), oldest first per pool."""
        pools = sorted(as_text(p) for p in self.conn.smembers(self.keys.parked_pools))
        with self.conn.pipeline(transaction=False) as pipe:
            for pool in pools:
                pipe.zrange(self.keys.parked(pool), 0, -1)
            lists = pipe.execute()
        return [as_text(i) for ids in lists for i in ids]

    def unqueue(self, job_id: str, priority: int, pool: str | None) -> None:
        """Take a queued job out of wherever it waits (its queue or the parked set)."""
        with self.conn.pipeline(transaction=True) as pipe:
            pipe.lrem(self.queue_key(self.keys.queue_name(priority)), 0, job_id)
            if pool is not None:
                pipe.zrem(self.keys.parked(pool), job_id)
            pipe.zrem(self.keys.queue_deadlines, job_id)
            pipe.execute()
        self._compact.pop(job_id, None)

    # --- recovery ---------------------------------------------------------------------------------
    def adopt_expired(self, owner: str, slots: int) -> list[Claim]:
        """Take over in-flight jobs whose dispatcher stopped renewing them (it died): at most `slots`."""
        if slots <= 0:
            return []
        now = time.time()
        if not self.conn.zrangebyscore(self.keys.inflight, "-inf", now, start=0, num=1):
            return []
        with signals_deferred(), self.lock():
            ids = [as_text(i) for i in self._adopt(keys=[self.keys.inflight, self.keys.inflight_owner],
                                                   args=[now, now + self.lease_ttl, owner, slots])]
            claims = []
            for job_id in ids:
                raw = self.conn.get(self.keys.claim(job_id))
                endpoint_id = as_text(raw) if raw else ""
                prefetched = False
                if endpoint_id:
                    holder = self.conn.get(self.keys.lease(endpoint_id))
                    queued = self.conn.get(self.keys.lease_next(endpoint_id))
                    if queued is not None and as_text(queued) == job_id:
                        prefetched = True
                        self.conn.pexpire(self.keys.lease_next(endpoint_id), self.lease_ms)
                    elif holder is None:
                        if not self.conn.set(self.keys.lease(endpoint_id), job_id, nx=True, px=self.lease_ms):
                            endpoint_id = ""
                    elif as_text(holder) != job_id:
                        endpoint_id = ""  # the endpoint went on to other work: this attempt is lost
                    else:
                        self.conn.pexpire(self.keys.lease(endpoint_id), self.lease_ms)
                info = (self.repo.compact_many([job_id]) or [None])[0] or {}
                priority = int(info.get("priority") or 5) if "corrupt" not in info else 5
                claims.append(Claim(job_id, endpoint_id, self.keys.queue_name(priority), adopted=True,
                                    prefetched=prefetched))
                log.warning("adopted job %s (endpoint %s) from a dispatcher that stopped", job_id, endpoint_id or "-")
        return claims

    # --- failing fast -----------------------------------------------------------------------------
    def _fail_no_capable_worker(self, queue_key: str, job_id: str, pool: str | None, needs: ModelNeeds,
                                candidates: list[Candidate]) -> None:
        pods = [c for c in candidates if c.healthy and (pool is None or c.pool == pool)]
        have = sorted(set().union(*(c.checkpoints | c.loras for c in pods))) if pods else []
        missing = needs.missing_on(set().union(*(c.checkpoints for c in pods)), set().union(*(c.loras for c in pods)))
        error = JobError(
            code=ErrorCode.NO_CAPABLE_WORKER,
            message=f"no ready worker{' in pool ' + pool if pool else ''} has {', '.join(missing)}",
            details={"missing": missing, "available": have},
        )
        self.conn.lrem(queue_key, 0, job_id)
        self._compact.pop(job_id, None)
        try:
            failed = self.repo.update(job_id, lambda j: transition(j, JobState.FAILED, error=error)
                                      if not j.state.is_terminal else j)
            if failed.error == error:  # HOOK(observability): outcome counter (failed fast, no endpoint)
                hooks.observe_finished(failed)
        except JobNotFound:
            pass
        drop_rq_job(self.conn, job_id)
        log.info("job %s failed fast: %s", job_id, error.message)

    def _drop(self, queue_key: str, job_id: str) -> None:
        self.conn.lrem(queue_key, 0, job_id)
        self._compact.pop(job_id, None)
        drop_rq_job(self.conn, job_id)

    @staticmethod
    def queue_key(queue_name: str) -> str:
        """RQ's list key for a queue name (rq.Queue.key, without building a Queue per call)."""
        return f"rq:queue:{queue_name}"


def drop_rq_job(conn: redis.Redis, job_id: str) -> None:
    """Cancel the RQ side of a job that will never run (it may already be gone)."""
    try:
        RQJob.fetch(job_id, connection=conn, serializer=SERIALIZER).cancel()
    except (NoSuchJobError, InvalidJobOperation):
        pass
