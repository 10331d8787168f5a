"""The async delivery loop: claim due deliveries from the outbox, POST them signed, retry with backoff.

It runs beside dispatch (never inside a job's path): a dead or slow receiver only delays its own deliveries.
Several deliverers may run at once (API replicas, dispatchers): a delivery is claimed by pushing its due time
past the attempt's timeout in one Lua step, so one attempt runs at a time and a crashed deliverer's claims
come due again by themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import redis
import redis.asyncio as aioredis

from comfyfleet.jobs.model import Job, WebhookDelivery
from comfyfleet.keys import Keys
from comfyfleet.net.fetch import FetchError, fetch
from comfyfleet.net.policy import UrlPolicy, UrlPolicyError
from comfyfleet.settings import DispatchSettings
from comfyfleet.store.jobrepo import JobNotFound, JobRepo
from comfyfleet.webhooks.outbox import WebhookKeys
from comfyfleet.webhooks.signing import webhook_headers

log = logging.getLogger(__name__)
DeliveryState = Literal["pending", "delivered", "failed"]

# Claim up to `count` deliveries due by `now`, pushing each one's due time to `until` (its attempt's lease).
_CLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], 'XX', ARGV[2], id) end
return ids
"""
# How often an idle deliverer looks for due deliveries; a final state is announced within about this long.
POLL_SECONDS = 0.5
# An outbox entry is written just before its job's state; one the job still does not list after this long
# belongs to a write that lost its race or never happened.
ORPHAN_GRACE_SECONDS = 30.0
# Receiver answers are recorded up to this many characters (an HTML error page is not worth keeping whole).
ERROR_CHARS = 300


@dataclass(frozen=True)
class RetryPolicy:
    backoff_seconds: float
    backoff_max_seconds: float
    window_seconds: float

    def next_due(self, attempts: int, created: float, now: float) -> float | None:
        """When to try again after `attempts` failed attempts, or None to give up (pure)."""
        delay = min(self.backoff_max_seconds, self.backoff_seconds * 2 ** max(0, attempts - 1))
        due = now + delay
        return due if due - created <= self.window_seconds else None


def outbound_policy(settings: DispatchSettings, max_bytes: int = 64 * 1024) -> UrlPolicy:
    """The outbound policy from settings; webhook answers are read up to `max_bytes` (we keep only a snippet)."""
    return UrlPolicy.build(settings.outbound_allow_hosts, allow_http=settings.outbound_allow_http,
                           timeout_seconds=settings.outbound_timeout_seconds,
                           max_redirects=settings.outbound_max_redirects, max_bytes=max_bytes)


@dataclass
class Attempt:
    """What one POST came to: delivered, or why not."""

    delivered: bool
    status: int | None
    error: str | None


class WebhookDeliverer:
    """Delivers the outbox until cancelled: `await WebhookDeliverer.from_settings(s).run_forever()`."""

    def __init__(self, aconn: aioredis.Redis, repo: JobRepo, keys: Keys, secret: str, policy: UrlPolicy,
                 retry: RetryPolicy, concurrency: int = 16, poll_seconds: float = POLL_SECONDS):
        self.aconn = aconn
        self.repo = repo
        self.wk = WebhookKeys.of(keys)
        self.secret = secret
        self.policy = policy
        self.retry = retry
        self.poll_seconds = poll_seconds
        self.slots = asyncio.Semaphore(concurrency)
        self.concurrency = concurrency
        self.inflight: set[asyncio.Task[None]] = set()
        self._claim = aconn.register_script(_CLAIM)

    @classmethod
    def from_settings(cls, settings: DispatchSettings, aconn: aioredis.Redis, repo: JobRepo) -> WebhookDeliverer:
        retry = RetryPolicy(settings.webhook_backoff_seconds, settings.webhook_backoff_max_seconds,
                            settings.webhook_retry_window_seconds)
        return cls(aconn, repo, repo.keys, settings.webhook_secret, outbound_policy(settings), retry,
                   concurrency=settings.webhook_concurrency)

    async def run_forever(self) -> None:
        log.info("webhook deliverer started")
        try:
            while True:
                try:
                    claimed = await self.tick()
                except redis.RedisError as exc:
                    log.warning("webhook outbox unreachable: %s", exc)
                    claimed = 0
                if not claimed:
                    await asyncio.sleep(self.poll_seconds)
        finally:
            for task in list(self.inflight):
                task.cancel()
            for task in list(self.inflight):
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def tick(self) -> int:
        """Claim what is due (as many as there are free slots) and start delivering it; returns how many."""
        free = self.concurrency - len(self.inflight)
        if free <= 0:
            return 0
        now = time.time()
        lease = now + self.policy.timeout_seconds + 30  # an attempt never outlives its timeout; 30 s of slack
        ids = await self._claim(keys=[self.wk.due], args=[now, lease, free])
        for raw in ids:
            task = asyncio.create_task(self._deliver(raw.decode()))
            self.inflight.add(task)
            task.add_done_callback(self.inflight.discard)
        return len(ids)

    async def _deliver(self, did: str) -> None:
        async with self.slots:
            try:
                await self.deliver(did)
            except (redis.RedisError, OSError) as exc:  # the claim's lease brings it back for another try
                log.warning("webhook %s: could not record the attempt: %s", did, exc)

    async def deliver(self, did: str) -> None:
        """One attempt of one delivery, and its bookkeeping in the outbox and on the job."""
        msg: dict[Any, Any] = await self.aconn.hgetall(self.wk.message(did))
        if not msg:
            await self.aconn.zrem(self.wk.due, did)
            return
        job_id, url, body = msg[b"job_id"].decode(), msg[b"url"].decode(), msg[b"body"]
        if await self._orphan(did, job_id, float(msg.get(b"created", 0))):
            return
        attempts = int(msg.get(b"attempts", b"0")) + 1
        result = await self.post(did, url, body)
        now = time.time()
        await self.aconn.hset(self.wk.message(did), "attempts", attempts)
        state, due = await self._settle(did, result, attempts, float(msg.get(b"created", now)), now)
        if state == "failed":
            log.warning("webhook %s for job %s: giving up after %d attempts: %s", did, job_id, attempts, result.error)
        elif due is not None:
            log.info("webhook %s for job %s: attempt %d failed (%s), next in %.0f s", did, job_id, attempts,
                     result.error, due - now)
        record = WebhookDelivery(
            id=did, event=msg[b"event"].decode(), state=state, attempts=attempts, last_status=result.status,
            last_error=result.error, last_attempt_at=_dt(now), next_attempt_at=_dt(due) if due else None,
        )
        await asyncio.to_thread(self._record, job_id, record)

    async def _orphan(self, did: str, job_id: str, created: float) -> bool:
        """True when the state change that queued this delivery was never written (its job does not list it):
        wait a little (the write may be a moment behind the outbox entry), then drop it."""
        job = await asyncio.to_thread(self.repo.get, job_id)
        if job is None or any(d.id == did for d in job.webhook_deliveries):
            return False  # listed, or the record is gone (expired, cleaned): the body is self-contained
        if time.time() - created < ORPHAN_GRACE_SECONDS:
            await self.aconn.zadd(self.wk.due, {did: time.time() + 1}, xx=True)
        else:
            log.info("webhook %s: job %s never reached that state; dropping the delivery", did, job_id)
            await self.aconn.zrem(self.wk.due, did)
            await self.aconn.delete(self.wk.message(did))
        return True

    async def _settle(self, did: str, result: Attempt, attempts: int, created: float,
                      now: float) -> tuple[DeliveryState, float | None]:
        """Remove a finished delivery from the due set or schedule its next attempt; count the outcome."""
        if result.delivered:
            await self.aconn.zrem(self.wk.due, did)
            await self.aconn.hincrby(self.wk.stats, "delivered", 1)
            return "delivered", None
        await self.aconn.hincrby(self.wk.stats, "failed_attempts", 1)
        due = self.retry.next_due(attempts, created, now)
        if due is None:
            await self.aconn.zrem(self.wk.due, did)
            await self.aconn.hincrby(self.wk.stats, "gave_up", 1)
            return "failed", None
        await self.aconn.zadd(self.wk.due, {did: due}, xx=True)
        return "pending", due

    async def post(self, did: str, url: str, body: bytes) -> Attempt:
        headers = webhook_headers(self.secret, did, int(time.time()), body)
        headers["user-agent"] = "comfyfleet-webhooks"
        try:
            answer = await fetch(url, self.policy, method="POST", content=body, headers=headers)
        except UrlPolicyError as exc:
            return Attempt(False, None, f"refused by the outbound URL policy: {exc}")
        except FetchError as exc:
            return Attempt(False, None, str(exc)[:ERROR_CHARS])
        if 200 <= answer.status < 300:
            return Attempt(True, answer.status, None)
        snippet = answer.body[:ERROR_CHARS].decode(errors="replace")
        return Attempt(False, answer.status, f"HTTP {answer.status}: {snippet}".strip())

    def _record(self, job_id: str, record: WebhookDelivery) -> None:
        """Show the attempt on the job (the job record may have expired meanwhile: then only the outbox has it)."""
        def change(job: Job) -> Job:
            listed = [record if d.id == record.id else d for d in job.webhook_deliveries]
            if record.id not in {d.id for d in job.webhook_deliveries}:
                listed.append(record)
            return job.model_copy(update={"webhook_deliveries": listed})

        with contextlib.suppress(JobNotFound):
            self.repo.update(job_id, change, "webhook")


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)

