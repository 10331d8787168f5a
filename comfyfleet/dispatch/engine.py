"""The dispatcher: one asyncio process that drives many ComfyUI endpoints at once.

Each in-flight job is a task of this process (up to `max_in_flight`, 256 by default), not a forked process.
Claims are driven by events — a job queued, an endpoint freed or healthy again, a retry due — heard on one
Redis pub/sub subscription; one claim pass assigns as many (job, endpoint) pairs as there are free slots.
Every endpoint has one pooled HTTP client and one shared websocket (comfy/hub.py) in this process.

Recovery is exact: every in-flight job has a deadline in Redis that only its dispatcher renews. When a
dispatcher dies (SIGKILL, node loss) its deadlines lapse and any other dispatcher (or its own restart)
adopts those jobs within the lease TTL: it keeps the endpoint lease and attaches to the prompt still running
there, so nothing runs twice and nothing waits for RQ's minute-long abandoned-job detection. On SIGTERM a
dispatcher hands its jobs over at once. Redis outages, lock time-outs and bad records are survived: each loop
backs off and goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import redis

from comfyfleet import gctune
from comfyfleet.comfy.client import ComfyClient
from comfyfleet.comfy.hub import WsHub
from comfyfleet.dispatch.probe import ProbeServer
from comfyfleet.dispatch.registry import RELEASE_LUA, Endpoint, to_candidate
from comfyfleet.dispatch.rqworker import RQRun, make_scheduler, make_worker
from comfyfleet.dispatch.runner import JobRun, RunContext, Settled, wait_prompt_gone
from comfyfleet.dispatch.scheduler import Claim
from comfyfleet.dispatch.selection import Candidate
from comfyfleet.dispatch.service import Dispatcher
from comfyfleet.jobs.model import JobState
from comfyfleet.redisconn import async_redis
from comfyfleet.settings import DispatchSettings
from comfyfleet.store.factory import output_store

log = logging.getLogger(__name__)
T = TypeVar("T")

# Without any wake-up, look for work this often anyway (a wake-up lost while Redis was away, a lease that
# expired): one cheap read when nothing is free or queued.
IDLE_RECHECK_SECONDS = 1.0
# Maintenance (deadlines, leases, liveness, adoption, due retries) runs this often.
MAINTENANCE_SECONDS = 1.0
# The registry snapshot (health, models) is re-read at most this often; leases are always read fresh.
SNAPSHOT_MAX_AGE_SECONDS = 0.5
# Renew or give up: a dispatcher that cannot reach Redis backs off from 0.2 s up to this.
MAX_BACKOFF_SECONDS = 10.0

# Renew in-flight deadlines only for jobs this dispatcher still owns. KEYS: inflight, owner. ARGV: deadline,
# owner, job ids... Returns the ids whose owner changed (adopted elsewhere after a stall: stop driving them).
_RENEW_INFLIGHT = """
local lost = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  if redis.call('HGET', KEYS[2], id) == ARGV[2] then
    redis.call('ZADD', KEYS[1], ARGV[1], id)
  else
    table.insert(lost, id)
  end
end
return lost
"""

# A job's end in this process, in one step: out of the in-flight set, its claim forgotten, its lease freed and the
# dispatchers woken (unless its pod was freed already, see _FREE). KEYS: inflight, owner, claim, lease, next
# lease. ARGV: job id, wake channel, 1 if it still holds an endpoint, this dispatcher's name (the wake's payload:
# it woke itself already).
_FINISH = RELEASE_LUA + """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3])
if ARGV[3] == '1' then
  release(KEYS[4], KEYS[5], ARGV[1])
  redis.call('PUBLISH', ARGV[2], ARGV[4])
end
return 1
"""

# A pod freed before its job ended: the lease released (a prefetched job moves up) and the dispatchers woken.
# KEYS: lease, next lease, then every priority queue. ARGV: job id, wake channel, this dispatcher's name.
# Returns how many jobs are queued (0 when a prefetched job moved up: the pod has its next prompt already).
_FREE = RELEASE_LUA + """
local promoted = redis.call('EXISTS', KEYS[2]) == 1
release(KEYS[1], KEYS[2], ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
if promoted then return 0 end
local n = 0
for i = 3, #KEYS do n = n + redis.call('LLEN', KEYS[i]) end
return n
"""
# How long a job whose prompt has just ended lets the pod's next prompt go first (the claim and the POST) before
# it reads its own outputs: they compete for this process's CPU, and the GPU waits only for the former.
HAND_ON_WAIT_SECONDS = 0.05
# Cancel requests remembered for jobs not (yet) started here (see _cancel_heard): far more than can be between
# a claim's read and its start, a few hundred KiB at most.
EARLY_CANCELS_KEPT = 4096


class EndpointLink:
    """One endpoint's pooled HTTP client and shared websocket in this process."""

    def __init__(self, endpoint: Endpoint, client_id: str):
        self.url = endpoint.url
        self.client = ComfyClient(endpoint.url, client_id=client_id)
        self.hub = WsHub(self.client.ws_url(client_id), client_id, open_timeout=self.client.timeout)
        self.can_clean = True

    async def close(self) -> None:
        await self.hub.close()
        await self.client.close()


class Backoff:
    def __init__(self) -> None:
        self.delay = 0.0

    async def sleep(self) -> None:
        self.delay = min(max(self.delay * 2, 0.2), MAX_BACKOFF_SECONDS)
        await asyncio.sleep(self.delay)

    def reset(self) -> None:
        self.delay = 0.0


def dispatcher_name() -> str:
    return f"dispatcher-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Engine:
    def __init__(self, settings: DispatchSettings, name: str | None = None):
        self.settings = settings
        self.name = name or dispatcher_name()
        # Short socket time-outs: a Redis that stops answering must surface as an error (and a back-off), not
        # hang a loop; a connection pool sized for the I/O threads plus the bookkeeping thread.
        self.conn = redis.Redis.from_url(settings.redis_url, socket_timeout=10, socket_connect_timeout=5,
                                         health_check_interval=30, max_connections=settings.io_threads + 8)
        self.d = Dispatcher(self.conn, settings)
        self.keys = self.d.keys
        self.store = output_store(settings)
        self.client_id = f"comfyfleet-{uuid.uuid4().hex}"
        self.links: dict[str, EndpointLink] = {}
        self.snapshot: list[Candidate] = []
        self.endpoints: dict[str, Endpoint] = {}
        self.snapshot_at = 0.0
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.claims: dict[str, Claim] = {}
        self.cancel_events: dict[str, asyncio.Event] = {}
        self.early_cancels: dict[str, None] = {}  # cancels heard before their job started here, oldest first
        self.posted: dict[str, asyncio.Event] = {}  # set once a job's prompt is on its pod
        self.rq_runs: dict[str, RQRun] = {}
        self.holding: set[str] = set()
        self.wake = asyncio.Event()
        self.stopping = asyncio.Event()
        self.io_pool = ThreadPoolExecutor(settings.io_threads, thread_name_prefix="dispatch-io")
        # RQ's worker object is not thread-safe: every RQ call goes through this one thread, in order.
        self.rq_pool = ThreadPoolExecutor(1, thread_name_prefix="dispatch-rq")
        queue_names = self.keys.queue_names()
        self.worker = make_worker(queue_names, self.conn, self.name, settings.job_monitoring_interval_seconds)
        self.rq_scheduler = make_scheduler(queue_names, self.conn, self.name)
        self._renew_inflight = self.conn.register_script(_RENEW_INFLIGHT)
        self._finish = self.conn.register_script(_FINISH)
        self._free = self.conn.register_script(_FREE)
        self.pod_freed: set[str] = set()  # jobs in flight whose pod was released early (see _free_pod)
        self.freed_here = False
        self.queue_keys = [self.d.scheduler.queue_key(name) for name in self.keys.queue_names()]
        # Claim passes begun and the last one ended (numbered), for jobs that let the next prompt go first.
        self.passes_begun = 0
        self.pass_ended = 0
        self.pass_end = asyncio.Condition()
        self._own_wake = self.name.encode()
        self.last_loop_tick = time.monotonic()
        self.last_maintenance = time.monotonic()
        self.started = False
        self.ctx = RunContext(settings=settings, repo=self.d.repo, registry=self.d.registry, store=self.store,
                              link_for=self.link_for, io=self.io)
        self.probe = ProbeServer(self, settings.dispatcher_host, settings.dispatcher_port)

    # --- plumbing ---------------------------------------------------------------------------------
    async def io(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        call = functools.partial(fn, *args, **kwargs) if kwargs else functools.partial(fn, *args)
        return await asyncio.get_running_loop().run_in_executor(self.io_pool, call)

    async def rq(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.rq_pool, functools.partial(fn, *args, **kwargs))

    @property
    def slots(self) -> int:
        return self.settings.max_in_flight

    @property
    def free_slots(self) -> int:
        return self.slots - len(self.tasks)

    def link_for(self, endpoint: Endpoint) -> EndpointLink:
        link = self.links.get(endpoint.id)
        if link is None or link.url != endpoint.url:
            if link is not None:
                asyncio.get_running_loop().create_task(link.close())
            link = self.links[endpoint.id] = EndpointLink(endpoint, self.client_id)
        return link

    async def refresh_snapshot(self, force: bool = False) -> list[Candidate]:
        if force or time.monotonic() - self.snapshot_at > SNAPSHOT_MAX_AGE_SECONDS:
            endpoints = await self.io(self.d.registry.endpoints)
            self.endpoints = {e.id: e for e in endpoints}
            self.snapshot = [to_candidate(e, busy=False) for e in endpoints]
            self.snapshot_at = time.monotonic()
        return self.snapshot

    # --- lifecycle --------------------------------------------------------------------------------
    async def run(self) -> None:
        """Run until stop() (or SIGTERM/SIGINT through the CLI), then hand in-flight jobs over and exit."""
        backoff = Backoff()
        while not self.started:
            try:
                await self.rq(self.worker.start)
                self.started = True
            except redis.RedisError as exc:
                log.error("dispatcher %s: Redis unavailable at start (%s); retrying", self.name, exc)
                await backoff.sleep()
        log.info("dispatcher %s: up, %d slots, clientId %s", self.name, self.slots, self.client_id)
        await self.probe.start()
        coros: list[tuple[str, Coroutine[Any, Any, None]]] = [
            ("listen", self._listen()), ("claim", self._claim_loop()), ("maintain", self._maintain_loop()),
            ("tick", self._tick_loop())]
        aconn = async_redis(self.settings.redis_url, socket_connect_timeout=5)
        if self.settings.webhook_secret:
            # Webhook notifications go out from the dispatch side, in their own tasks, bounded in concurrency
            # and time: a slow or dead receiver never holds up a claim or a job.
            from comfyfleet.webhooks.deliverer import WebhookDeliverer

            coros.append(("webhooks", WebhookDeliverer.from_settings(self.settings, aconn, self.d.repo).run_forever()))
        loops = [asyncio.create_task(coro, name=name) for name, coro in coros]
        try:
            await self.stopping.wait()
        finally:
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            await aconn.aclose()
            await self._hand_over()
            await self.probe.stop()
            for link in list(self.links.values()):
                await link.close()
            with contextlib.suppress(redis.RedisError):
                await self.rq(self.worker.stop)
            self.io_pool.shutdown(wait=False, cancel_futures=True)
            self.rq_pool.shutdown(wait=False, cancel_futures=True)
            log.info("dispatcher %s: stopped", self.name)

    def stop(self) -> None:
        self.stopping.set()

    async def _hand_over(self) -> None:
        """Let another dispatcher adopt our jobs right away: their prompts keep running on their pods."""
        ids = list(self.tasks)
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        if ids:
            with contextlib.suppress(redis.RedisError):
                await self.io(lambda: self.conn.zadd(self.keys.inflight, dict.fromkeys(ids, 0)))
                await self.io(self.d.scheduler.wake)
            log.info("dispatcher %s: handed %d in-flight jobs over", self.name, len(ids))

    # --- loops ------------------------------------------------------------------------------------
    async def _tick_loop(self) -> None:
        while True:
            self.last_loop_tick = time.monotonic()
            await asyncio.sleep(0.5)

    async def _listen(self) -> None:
        """One subscription for wake-ups and cancel requests; reconnects with back-off."""
        backoff = Backoff()
        while True:
            aconn = async_redis(self.settings.redis_url, socket_connect_timeout=5)
            pubsub = aconn.pubsub()
            try:
                await pubsub.subscribe(self.keys.wake, self.keys.cancel)
                backoff.reset()
                self.wake.set()  # anything may have happened while we were not listening
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                    if message is None:
                        continue
                    channel = message["channel"].decode()
                    if channel == self.keys.wake:
                        if message["data"] != self._own_wake:  # our own end-of-job wake: already set locally
                            self.wake.set()
                    elif channel == self.keys.cancel:
                        self._cancel_heard(message["data"].decode())
            except (redis.RedisError, OSError) as exc:
                log.warning("dispatcher %s: subscription lost (%s); reconnecting", self.name, exc)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                    await aconn.aclose()
            await backoff.sleep()

    def _cancel_heard(self, job_id: str) -> None:
        """A cancel request on the channel: set its job's event, or, when no job of that id runs here (yet),
        remember it. A claim reads the record (cancel flag included) when it commits; a cancel can land between
        that read and the job's start here, and its message with it. Every dispatcher hears every cancel, so the
        memory is bounded (oldest dropped first); a cancel is never taken back, so a remembered one is never
        wrong."""
        event = self.cancel_events.get(job_id)
        if event is not None:
            event.set()
            return
        self.early_cancels[job_id] = None
        if len(self.early_cancels) > EARLY_CANCELS_KEPT:
            del self.early_cancels[next(iter(self.early_cancels))]

    async def _claim_loop(self) -> None:
        backoff = Backoff()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(IDLE_RECHECK_SECONDS):
                    await self.wake.wait()
            self.wake.clear()
            self.passes_begun += 1
            try:
                await self._claim_pass(backoff)
            finally:
                self.pass_ended = self.passes_begun
                async with self.pass_end:
                    self.pass_end.notify_all()

    async def _claim_pass(self, backoff: Backoff) -> None:
        free = self.free_slots
        if free <= 0:
            return
        try:
            candidates = await self.refresh_snapshot()
            look, self.freed_here = not self.freed_here, False
            if look and not await self.io(self._worth_a_pass, candidates):
                return
            claims = await self.io(self.d.scheduler.claim_batch, free, candidates, self.name)
        except (redis.RedisError, OSError) as exc:
            log.warning("dispatcher %s: claim failed (%s); backing off", self.name, exc)
            await backoff.sleep()
            self.wake.set()
            return
        except Exception:  # noqa: BLE001 - a bug in one pass must not stop the loop
            log.exception("dispatcher %s: claim pass failed", self.name)
            await backoff.sleep()
            return
        backoff.reset()
        for claim in claims:
            self._start(claim)
        if len(claims) == free:
            self.wake.set()  # there may be more to claim as soon as slots free up

    def _worth_a_pass(self, candidates: list[Candidate]) -> bool:
        """A lock-free look: is any healthy endpoint unleased, and is anything queued or parked?"""
        healthy = [c for c in candidates if c.healthy]
        if not healthy:
            return False
        with self.conn.pipeline(transaction=False) as pipe:
            pipe.mget([self.keys.lease(c.id) for c in healthy])
            pipe.mget([self.keys.lease_next(c.id) for c in healthy])
            for name in self.keys.queue_names():
                pipe.llen(self.d.scheduler.queue_key(name))
            pipe.scard(self.keys.parked_pools)
            leases, nexts, *counts = pipe.execute()
        free = any(lease is None or (c.prefetch and nxt is None)
                   for c, lease, nxt in zip(healthy, leases, nexts, strict=True))
        return free and any(counts)

    async def _maintain_loop(self) -> None:
        backoff = Backoff()
        last_renew = last_beat = 0.0
        while True:
            await asyncio.sleep(MAINTENANCE_SECONDS)
            now = time.monotonic()
            try:
                if now - last_renew >= self.settings.lease_ttl_seconds / 3:
                    await self._renew()
                    last_renew = now
                await self.io(self._advertise)
                if now - last_beat >= self.settings.job_monitoring_interval_seconds:
                    runs = list(self.rq_runs.values())
                    await self.rq(self.worker.beat, runs, self.settings.job_monitoring_interval_seconds + 60)
                    last_beat = now
                await self._adopt()
                if await self.rq(self._enqueue_due_retries):
                    self.wake.set()
                    await self.io(self.d.scheduler.wake)
                await self._close_stale_links()
                backoff.reset()
            except (redis.RedisError, OSError) as exc:
                log.warning("dispatcher %s: maintenance failed (%s); backing off", self.name, exc)
                await backoff.sleep()
            except Exception:  # noqa: BLE001 - keep maintaining whatever one round hit
                log.exception("dispatcher %s: maintenance round failed", self.name)
            # The loop went round (even if Redis is away): what /healthz watches is a loop that stopped.
            self.last_maintenance = time.monotonic()

    async def _renew(self) -> None:
        ids = list(self.tasks)
        if not ids:
            return
        deadline = time.time() + self.settings.lease_ttl_seconds
        lost = await self.io(lambda: self._renew_inflight(keys=[self.keys.inflight, self.keys.inflight_owner],
                                                          args=[deadline, self.name, *ids]))
        held = [(c.endpoint_id, c.job_id) for c in self.claims.values()
                if c.endpoint_id and c.job_id not in self.pod_freed]
        await self.io(self.d.registry.renew_leases, held, self.d.scheduler.lease_ms / 1000)
        for raw in lost:
            job_id = raw.decode()
            task = self.tasks.get(job_id)
            if task is not None:
                log.warning("dispatcher %s: job %s was adopted elsewhere (this loop stalled); letting it go",
                            self.name, job_id)
                task.cancel()

    def _advertise(self) -> None:
        """Our liveness and capacity, for `comfyfleet status`, the operator's capacity check and metrics."""
        stamp = time.time()
        with self.conn.pipeline(transaction=False) as pipe:
            pipe.zadd(self.keys.dispatchers, {self.name: stamp + max(3 * MAINTENANCE_SECONDS + 2, 5.0)})
            pipe.hset(self.keys.dispatcher(self.name), mapping={"slots": self.slots, "in_flight": len(self.tasks),
                                                                "last_tick": stamp, "client_id": self.client_id})
            pipe.expire(self.keys.dispatcher(self.name), 60)
            pipe.zremrangebyscore(self.keys.dispatchers, "-inf", stamp - 3600)
            pipe.execute()

    async def _adopt(self) -> None:
        free = self.free_slots
        if free <= 0:
            return
        for claim in await self.io(self.d.scheduler.adopt_expired, self.name, free):
            self._start(claim)

    def _enqueue_due_retries(self) -> bool:
        """Tick RQ's scheduler: move retries whose backoff passed back to their queues. True if any may have."""
        sched = self.rq_scheduler
        sched.acquire_locks()
        if not sched.acquired_locks:
            return False
        due = 0
        now = time.time()
        with self.conn.pipeline(transaction=False) as pipe:
            for name in sched.acquired_locks:
                pipe.zcount(f"rq:scheduled:{name}", "-inf", now)
            due = sum(pipe.execute())
        if due:
            sched.enqueue_scheduled_jobs()
        return bool(due)

    async def _close_stale_links(self) -> None:
        live = self.endpoints
        for endpoint_id in [i for i, link in self.links.items() if i not in live or live[i].url != link.url]:
            if any(c.endpoint_id == endpoint_id for c in self.claims.values()):
                continue
            await self.links.pop(endpoint_id).close()

    # --- one job ----------------------------------------------------------------------------------
    def _start(self, claim: Claim) -> None:
        if claim.job_id in self.tasks:
            return
        self.claims[claim.job_id] = claim
        self.cancel_events[claim.job_id] = cancelled = asyncio.Event()
        if claim.job_id in self.early_cancels:  # its cancel came between the claim's read of the record and now
            del self.early_cancels[claim.job_id]
            cancelled.set()
        self.posted[claim.job_id] = asyncio.Event()
        self.tasks[claim.job_id] = asyncio.create_task(self._drive(claim), name=f"job {claim.job_id}")

    async def _drive(self, claim: Claim) -> None:
        job_id = claim.job_id
        handed_over = False
        # RQ's start-of-execution bookkeeping runs while the prompt is posted (it is off the pod's critical
        # path); it has landed before RQ hears how the job ended.
        begun = asyncio.create_task(self._begin(claim))
        try:
            endpoint = self.endpoints.get(claim.endpoint_id) if claim.endpoint_id else None
            if claim.endpoint_id and endpoint is None:
                await self.refresh_snapshot(force=True)
                endpoint = self.endpoints.get(claim.endpoint_id)
            ahead = next((self.posted[c.job_id] for c in self.claims.values() if c.job_id != job_id
                          and c.endpoint_id == claim.endpoint_id and not c.prefetched and c.job_id in self.posted),
                         None) if claim.prefetched else None
            job_run = JobRun(self.ctx, job_id, endpoint, adopted=claim.adopted, cancelled=self.cancel_events[job_id],
                             stored=claim.record,
                             prefetched=claim.prefetched, posted=self.posted[job_id], after=ahead,
                             pod_free=functools.partial(self._free_pod, claim) if claim.endpoint_id else None)
            settled = await job_run.run()
            if settled.held_prompt and endpoint is not None:
                if await self._hold(endpoint, job_id):
                    await job_run.clean_pod()
            rq_run = await begun
            await self._retrying(f"job {job_id}: RQ bookkeeping", lambda: self._record(settled, rq_run))
        except asyncio.CancelledError:
            handed_over = True  # shutting down or adopted elsewhere: the job stays in flight for its next owner
            begun.cancel()
            raise
        except Exception:  # noqa: BLE001 - the slot and the lease must come back whatever happened
            log.exception("dispatcher %s: job %s: bookkeeping failed", self.name, job_id)
        finally:
            self.tasks.pop(job_id, None)
            self.rq_runs.pop(job_id, None)
            self.cancel_events.pop(job_id, None)
            self.claims.pop(job_id, None)
            self.posted.pop(job_id, None)
            try:
                if not handed_over:
                    await self._release(claim)
            finally:
                self.pod_freed.discard(job_id)

    async def _begin(self, claim: Claim) -> RQRun | None:
        """Open RQ's execution of a claimed job (None: RQ has no readable record of it, or Redis failed; the
        job then settles as if RQ had lost its record)."""
        try:
            rq_run = await self.rq(self.worker.begin, claim.job_id, claim.queue_name, claim.adopted, claim.rq_record)
        except (redis.RedisError, OSError) as exc:
            log.warning("job %s: RQ's start of execution not recorded (%s)", claim.job_id, exc)
            return None
        if rq_run is not None and claim.job_id in self.tasks:
            self.rq_runs[claim.job_id] = rq_run
        return rq_run

    async def _hold(self, endpoint: Endpoint, job_id: str) -> bool:
        """Keep the endpoint leased until ComfyUI has let go of the prompt we gave up on; False if it never did."""
        self.holding.add(endpoint.id)
        try:
            log.info("job %s settled; holding %s until ComfyUI lets go of its prompt", job_id, endpoint.url)
            if await wait_prompt_gone(self.link_for(endpoint).client, job_id):
                return True
            await self.io(self.d.registry.mark_unhealthy, endpoint.id,
                          f"prompt {job_id} was interrupted but never left the pod")
            return False
        finally:
            self.holding.discard(endpoint.id)

    async def _record(self, settled: Settled, rq_run: RQRun | None) -> None:
        """RQ's record of the execution, in line with the job's."""
        job, decision = settled.job, settled.decision
        if job is None:
            if rq_run is not None:
                await self.rq(self.worker.fail, rq_run, "the job record is gone", retry=False)
            return
        retry = (decision is not None and decision.state is JobState.QUEUED) or job.state is JobState.QUEUED
        if rq_run is None:
            if retry:
                await self.io(self.d.enqueue, job)  # RQ lost its record: queue a fresh one
            return
        if job.state is JobState.SUCCEEDED:
            await self.rq(self.worker.succeed, rq_run, {"job_id": job.id, "state": job.state.value})
        else:
            message = job.error.message if job.error else job.state.value
            await self.rq(self.worker.fail, rq_run, message, retry=retry,
                          stopped=job.state is JobState.CANCELLED)

    async def _retrying(self, what: str, step: Callable[[], Any]) -> None:
        """Retry a step through a Redis outage (bounded), then give up loudly."""
        backoff = Backoff()
        for _ in range(30):
            try:
                await step()
                return
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                log.warning("%s failed (%s); retrying", what, exc)
                await backoff.sleep()
        log.error("%s: gave up after repeated Redis errors", what)

    async def _free_pod(self, claim: Claim) -> None:
        """The job's prompt has ended on its pod: release the lease now (a prefetched job moves up) and wake the
        dispatchers, so the pod's next prompt need not wait for this job's outputs to be fetched, stored and
        settled. The job stays in flight (recovery still covers it); `_release` later knows the lease is gone."""
        endpoint = claim.endpoint_id
        try:
            queued = await self.io(self._free, keys=[self.keys.lease(endpoint), self.keys.lease_next(endpoint),
                                                     *self.queue_keys], args=[claim.job_id, self.keys.wake, self.name])
        except (redis.RedisError, OSError) as exc:  # still leased: the end-of-job release frees it
            log.info("job %s: early release of %s failed (%s)", claim.job_id, claim.endpoint_id, exc)
            return
        self.pod_freed.add(claim.job_id)
        self.freed_here = True  # a pod is free for sure: the next pass needs no look before taking the lock
        self.wake.set()
        if queued:
            await self._hand_on(claim, self.passes_begun)

    async def _hand_on(self, claim: Claim, seen: int) -> None:
        """Let the freed pod's next prompt go first: wait (HAND_ON_WAIT_SECONDS at most) for a claim pass begun
        after the release to end and, if it gave the pod a job, for that job's prompt to be posted."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(HAND_ON_WAIT_SECONDS):
                async with self.pass_end:
                    await self.pass_end.wait_for(lambda: self.pass_ended > seen)
                nxt = next((c.job_id for c in self.claims.values()
                            if c.endpoint_id == claim.endpoint_id and c.job_id != claim.job_id), None)
                posted = self.posted.get(nxt) if nxt else None
                if posted is not None:
                    await posted.wait()

    async def _release(self, claim: Claim) -> None:
        endpoint = claim.endpoint_id or ""
        keys = [self.keys.inflight, self.keys.inflight_owner, self.keys.claim(claim.job_id),
                self.keys.lease(endpoint), self.keys.lease_next(endpoint)]
        holds = claim.endpoint_id and claim.job_id not in self.pod_freed
        args = [claim.job_id, self.keys.wake, 1 if holds else 0, self.name]

        def release() -> None:
            self._finish(keys=keys, args=args)

        backoff = Backoff()
        for _ in range(20):
            try:
                await self.io(release)
                break
            except (redis.RedisError, OSError) as exc:
                log.warning("job %s: release failed (%s); retrying", claim.job_id, exc)
                await backoff.sleep()
        self.wake.set()

    # --- health -----------------------------------------------------------------------------------
    def health(self) -> tuple[bool, dict[str, Any]]:
        """Alive while the event loop turns and maintenance keeps completing (Redis being away is not a reason
        to restart us: we back off and recover on our own)."""
        now = time.monotonic()
        loop_lag = now - self.last_loop_tick
        maintenance_age = now - self.last_maintenance
        ok = loop_lag < 10 and (maintenance_age < 60 or not self.started)
        return ok, {"name": self.name, "slots": self.slots, "in_flight": len(self.tasks),
                    "loop_lag_seconds": round(loop_lag, 3), "maintenance_age_seconds": round(maintenance_age, 3)}


def run(settings: DispatchSettings) -> None:
    """`comfyfleet dispatcher`: run one engine until SIGTERM/SIGINT."""
    import signal

    from comfyfleet.comfy.client import warm_up

    warm_up()
    gctune.settle()  # out of the collector's full passes: what start-up loaded; fewer young passes

    async def main() -> None:
        engine = Engine(settings)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, engine.stop)
        await engine.run()

    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:  # uvloop: less CPU per loop turn
        runner.run(main())
