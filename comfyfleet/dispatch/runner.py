"""One attempt of one job on the endpoint its claim leased: an asyncio task inside the dispatcher.

The attempt posts the prompt over the endpoint's pooled HTTP client and follows it on the endpoint's shared
websocket, turns ComfyUI's events into progress (throttled writes of the progress field only), stores the
outputs, and settles the job through the pure `outcome.decide`. A cancel or timeout interrupts the prompt on
the pod; if ComfyUI has not let go of it when the job is settled (it interrupts only at node boundaries),
the endpoint stays leased until the prompt has left the pod's queue, so no new prompt waits behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import mimetypes
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

import redis

from comfyfleet.comfy.client import ComfyClient
from comfyfleet.comfy.errors import ComfyError
from comfyfleet.comfy.hub import WsHub
from comfyfleet.comfy.messages import (
    ComfyEvent,
    Executing,
    ExecutionCached,
    ExecutionStart,
    ExecutionSuccess,
    Progress,
)
from comfyfleet.comfy.models import RunResult
from comfyfleet.convert import store_output  # HOOK(integrations): output format + inline
from comfyfleet.dispatch.outcome import Decision, Ending, EndKind, decide, ending_of_error, ending_of_result
from comfyfleet.dispatch.registry import Endpoint, Registry
from comfyfleet.jobs.model import Job, JobState, OutputFile, utcnow
from comfyfleet.jobs.progress import ProgressTracker
from comfyfleet.jobs.states import can_transition, transition
from comfyfleet.jobs.workflow import isolate_outputs, rename_input_images
from comfyfleet.observability import hooks
from comfyfleet.settings import DispatchSettings
from comfyfleet.store.jobrepo import JobNotFound, JobRepo, StateChanged, decode_job, is_quarantined
from comfyfleet.store.outputs import OutputStore, StorageError
from comfyfleet.usage import record_run_usage

log = logging.getLogger(__name__)
T = TypeVar("T")

# While holding an endpoint for a prompt ComfyUI has not let go of, look at its queue this often...
HOLD_POLL_SECONDS = 1.0
# ...and give up after this long: the endpoint is marked unhealthy (a probe re-admits it once it is clear).
HOLD_LIMIT_SECONDS = 1800.0
# A prefetched job waits at most this long for the job ahead of it to be posted (it normally takes milliseconds).
POST_ORDER_WAIT_SECONDS = 30.0
# A settling write that meets a Redis outage is retried, backing off up to 5 s, for this long in all.
REDIS_RETRY_SECONDS = 300.0
# Sampler steps are coalesced to at most one write per job per this many seconds (a node's start and its last
# step always land).
PROGRESS_INTERVAL_SECONDS = 0.2


class Link(Protocol):
    """An endpoint's pooled HTTP client and shared websocket, owned by the dispatcher."""

    client: ComfyClient
    hub: WsHub
    can_clean: bool  # the pod serves the worker image's cleanup route (False after its first 404/405)


@dataclass
class RunContext:
    settings: DispatchSettings
    repo: JobRepo
    registry: Registry
    store: OutputStore
    link_for: Callable[[Endpoint], Link]
    io: Callable[..., Awaitable[Any]]  # run a blocking call (Redis, files) off the event loop


@dataclass
class Settled:
    """How an attempt left the job (None when the record is gone), and whether the endpoint is still busy."""

    job: Job | None
    decision: Decision | None = None
    held_prompt: bool = False  # ComfyUI still runs the prompt: keep the endpoint leased until it is gone


class AttemptEnded(Exception):
    def __init__(self, ending: Ending):
        super().__init__(ending.message)
        self.ending = ending


class JobRun:
    """One attempt: `await JobRun(ctx, job_id, endpoint, adopted, cancel).run()`."""

    def __init__(self, ctx: RunContext, job_id: str, endpoint: Endpoint | None, *, adopted: bool,
                 cancelled: asyncio.Event, prefetched: bool = False, posted: asyncio.Event | None = None,
                 after: asyncio.Event | None = None, pod_free: Callable[[], Coroutine[Any, Any, None]] | None = None,
                 stored: Mapping[bytes, bytes] | None = None):
        self.ctx = ctx
        self.stored = stored  # the record as the claim's commit left it (raw hash), read again if None
        # Called once the prompt has succeeded on the pod (its `execution_success`): the GPU is free for the next
        # prompt while this job reads its history and outputs, stores them and settles (the dispatcher releases
        # the lease early).
        self.pod_free = pod_free
        self._freeing: asyncio.Task[None] | None = None
        self._announced: asyncio.Task[None] | None = None
        # Set once this job's prompt is on the pod (or the attempt ended): a job prefetched behind it waits for
        # it (`after`) before posting, so the pod's queue keeps the order the jobs were claimed in.
        self.posted = posted or asyncio.Event()
        self.after = after
        # Queued on the pod behind its running job: the timeout counts from the prompt's own start.
        self.prefetched = prefetched
        self.job_id = job_id
        self.endpoint = endpoint
        self.adopted = adopted
        self.cancelled = cancelled
        # Set when the attempt gives up (cancel, timeout): a prompt not posted by then is never posted.
        self.withdrawn = asyncio.Event()
        self.job: Job | None = None  # the stored record as this runner knows it (read, plus its own writes)
        self.outputs: list[OutputFile] | None = None  # stored outputs of a successful run, not yet on the record
        self.held_prompt = False
        self._progress: ProgressWriter | None = None
        self._cleanup: tuple[Link, Job, RunResult | None] | None = None
        self.obs: hooks.Attempt | None = None

    async def durable(self, fn: Callable[..., T], *args: Any) -> T:
        """A Redis call that must land: retried through an outage (Redis restarting, failing over)."""
        deadline = time.monotonic() + REDIS_RETRY_SECONDS
        delay = 0.2
        while True:
            try:
                result: T = await self.ctx.io(fn, *args)
                return result
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError, OSError) as exc:
                # Also "OOM command not allowed" (Redis at maxmemory with noeviction): retried until memory frees.
                if time.monotonic() > deadline or (isinstance(exc, redis.ResponseError) and "OOM" not in str(exc)):
                    raise
                log.warning("job %s: Redis unavailable (%s); retrying in %.1f s", self.job_id, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def best_effort(self, fn: Callable[..., Any], *args: Any) -> None:
        """A Redis write that may be lost (a progress tick): never fails the job."""
        try:
            await self.ctx.io(fn, *args)
        except (redis.RedisError, OSError) as exc:
            log.info("job %s: progress not written (%s)", self.job_id, exc)

    async def run(self) -> Settled:
        job = decode_job(self.job_id, self.stored) if self.stored else None
        if job is None or is_quarantined(job):  # not read by the claim, or unreadable: the repo quarantines it
            job = await self.durable(self.ctx.repo.get, self.job_id)
        if job is None:
            return Settled(None)
        self.job = job
        if job.state.is_terminal:  # adopted after it had finished: only the bookkeeping is left
            return Settled(job)
        if job.state is JobState.QUEUED:  # adopted after it was settled for a retry: RQ must queue it
            return Settled(job, Decision(JobState.QUEUED, job.error))
        if not self.adopted:  # its DISPATCHED event, sent while the prompt is posted; later writes wait for it
            self._announced = asyncio.create_task(self.best_effort(self.ctx.repo.publish, job, "state"))
        endpoint_id = self.endpoint.id if self.endpoint else None
        self.obs = hooks.start_attempt(job, endpoint_id, self.endpoint, adopted=self.adopted)  # HOOK(observability)
        try:
            ending = await self._attempt(job)
        except AttemptEnded as ended:
            ending = ended.ending
        except Exception as exc:  # noqa: BLE001 - any bug must still settle the job, never leave it running
            if not isinstance(exc, ComfyError):
                log.exception("job %s: unexpected error", self.job_id)
            ending = ending_of_error(exc, self.endpoint.url if self.endpoint else "")
        self.posted.set()
        if self._freeing is not None:  # an early release still on its way lands before the job settles
            await asyncio.shield(self._freeing)
        settled = await self._settle(ending)
        if settled.job is not None and settled.job.state is JobState.QUEUED:
            self._cleanup = None  # retried: the next attempt reuses the prompt id and upload folder; it cleans up
        elif not self.held_prompt:  # a held prompt still runs: its dispatcher cleans once ComfyUI let go of it
            await self.clean_pod()
        return settled

    # --- the attempt ------------------------------------------------------------------------------
    async def _attempt(self, job: Job) -> Ending:
        if self.endpoint is None:
            return Ending(EndKind.NO_ENDPOINT, "the endpoint leased for this job is gone")
        if job.cancel_requested or self.cancelled.is_set():
            return Ending(EndKind.CANCELLED, "cancelled before it started")
        link = self.ctx.link_for(self.endpoint)
        workflow = isolate_outputs(await self._upload_inputs(link.client, job), job.id)
        self._progress = ProgressWriter(self, ProgressTracker(total_nodes=len(job.workflow)))
        resume = self.adopted or job.attempts > 1
        if self.after is not None and not self.after.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.after.wait(), timeout=POST_ORDER_WAIT_SECONDS)
        run = asyncio.create_task(link.client.run(
            workflow, job.id, self._progress.on_event, silence_timeout=self.ctx.settings.silence_timeout_seconds,
            resume=resume, hub=link.hub, on_submitted=self.posted.set, withdrawn=self.withdrawn),
            name=f"prompt {job.id}")
        result: RunResult | None = None
        try:
            result = await self._wait(run, link.client, job)
        finally:
            if not run.done():
                run.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await run
            if self.posted.is_set() or job.inputs:  # whatever the ending: its history entry and uploads go
                self._cleanup = (link, job, None)
            await self._progress.flush()
            # HOOK(reliability): GPU-seconds, from the history the run already read (else read it now)
            counted = await record_run_usage(link.client, self.ctx.repo, job.id, result.messages if result else None)
            if counted and self.job is not None:  # the record's figure, in the runner's view of it
                self.job = self.job.model_copy(update={"gpu_seconds": round(self.job.gpu_seconds + counted, 3)})
        hooks.note_prompt_finished(self.obs)  # HOOK(observability)
        ending = ending_of_result(result)
        if ending.kind is EndKind.SUCCEEDED:
            self.free_pod()
            outputs = await self._store_outputs(link.client, job, result)
            hooks.note_outputs_stored(self.obs)  # HOOK(observability)
            self.outputs = outputs  # written with the final state
            self._cleanup = (link, job, result)  # and its outputs, once the job is settled (no client waits)
        elif ending.kind is EndKind.OUT_OF_MEMORY:
            with contextlib.suppress(ComfyError):
                await link.client.free(unload_models=True, free_memory=True)
        return ending

    def free_pod(self) -> asyncio.Task[None] | None:
        """The prompt has succeeded on the pod: hand the pod back (once); the task doing it, None if not."""
        if self.pod_free is not None and self._freeing is None:
            self._freeing = asyncio.create_task(self.pod_free(), name=f"free pod of {self.job_id}")
        return self._freeing

    async def clean_pod(self) -> None:
        """Once the job is settled and ComfyUI is done with its prompt: forget the prompt's history entry (any
        ending) and delete the job's uploads and, after a success, its stored outputs on the pod (the worker
        image's cleanup route; a pod without it answers 404/405 once and is not asked again)."""
        if self._cleanup is None:
            return
        link, job, result = self._cleanup
        self._cleanup = None
        settings = self.ctx.settings
        with contextlib.suppress(ComfyError):
            if settings.delete_pod_history:
                await link.client.delete_history([job.id])
            if not settings.keep_pod_files and link.can_clean:
                outputs = [o for o in result.outputs if o.type == "output"] if result is not None else []
                folder = f"comfyfleet-{job.id}" if job.inputs else None
                if outputs or folder:
                    link.can_clean = await link.client.cleanup_files(folder, outputs)
                    if not link.can_clean:
                        log.info("endpoint %s has no /comfyfleet/cleanup route (not the worker image): job "
                                 "uploads and outputs stay on it", link.client.base_url)

    async def _wait(self, run: asyncio.Task[RunResult], client: ComfyClient, job: Job) -> RunResult:
        """The run's result; on cancel or timeout, interrupt the prompt and wait a grace period for it."""
        cancel_wait = asyncio.create_task(self.cancelled.wait())
        try:
            while True:
                started = self.job.started_at if self.job is not None else None
                if self.prefetched and started is None:
                    left = 1.0  # still queued behind the pod's running job: its clock has not started
                else:
                    left = job.timeout_seconds - _elapsed_since(started if self.prefetched else job.dispatched_at)
                if left <= 0:
                    break
                done, _ = await asyncio.wait({run, cancel_wait}, timeout=min(left, 1.0),
                                             return_when=asyncio.FIRST_COMPLETED)
                if run in done:
                    return run.result()
                if cancel_wait in done:
                    break
        finally:
            cancel_wait.cancel()
        began = self.job is not None and self.job.started_at is not None  # ComfyUI began executing it
        why = Ending(EndKind.CANCELLED, "" if began else "cancelled while queued on the pod") \
            if self.cancelled.is_set() else Ending(
            EndKind.TIMEOUT, f"job exceeded its timeout of {job.timeout_seconds} s")
        if not await self._withdraw(run):  # the pod never had the prompt: nothing to interrupt
            raise AttemptEnded(Ending(why.kind, "cancelled before it started") if why.kind is EndKind.CANCELLED
                               else why)
        log.info("job %s: %s; interrupting it on %s", job.id, why.kind.value, client.base_url)
        try:
            await asyncio.wait_for(client.cancel(job.id), timeout=5)
        except (ComfyError, TimeoutError) as exc:
            log.warning("job %s: interrupt on %s failed: %s", job.id, client.base_url, exc)
        result = await self._after_interrupt(run, client, job.id, why)
        if why.kind is EndKind.TIMEOUT and result.status != "success":
            raise AttemptEnded(why)
        return result

    async def _withdraw(self, run: asyncio.Task[RunResult]) -> bool:
        """Keep a prompt not posted yet off the pod; True if the pod has it (posted, or its POST landed while we
        waited for it: an interrupt sent while the POST is on its way would reach the pod first and miss it)."""
        self.withdrawn.set()
        if not self.posted.is_set() and not run.done():
            posted = asyncio.create_task(self.posted.wait())
            try:
                await asyncio.wait({run, posted}, timeout=self.ctx.settings.cancel_grace_seconds,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                posted.cancel()
        if run.done() and not run.cancelled() and not self.posted.is_set():
            run.exception()  # ComfyPromptWithdrawn or the error that ended it before its POST: retrieved here
        # Still on its way after the grace period (a POST that hangs): treat it as posted, the interrupt and the
        # queue checks that follow find it if it landed.
        return self.posted.is_set() or not run.done()

    async def _after_interrupt(self, run: asyncio.Task[RunResult], client: ComfyClient, prompt_id: str,
                               why: Ending) -> RunResult:
        """Wait for an interrupted prompt to end: its result if it ends, AttemptEnded(why) once it has left the
        pod's queue without one (a pending prompt we deleted), or after the grace period with the endpoint
        marked held (ComfyUI is still inside a node it cannot leave)."""
        deadline = time.monotonic() + self.ctx.settings.cancel_grace_seconds
        absent = 0
        while time.monotonic() < deadline:
            done, _ = await asyncio.wait({run}, timeout=0.5)
            if run in done:
                try:
                    return run.result()
                except ComfyError:
                    raise AttemptEnded(why) from None
            try:
                absent = absent + 1 if prompt_id not in await client.queue() else 0
            except ComfyError:
                absent = 0
            if absent >= 3:  # gone from the pod for a while and no result came: deleted while pending
                raise AttemptEnded(why)
        self.held_prompt = True
        raise AttemptEnded(why)

    async def _upload_inputs(self, client: ComfyClient, job: Job) -> dict[str, Any]:
        """Upload the job's input images to the pod (own subfolder per job) and point LoadImage at them."""
        if not job.inputs:
            return job.workflow
        names: dict[str, str] = {}
        for item in job.inputs:
            try:
                data = await self.ctx.io(self.ctx.store.read, item.key)
            except StorageError as exc:
                raise AttemptEnded(Ending(EndKind.STORAGE, str(exc))) from None
            try:
                uploaded = await client.upload_image(data, item.name, subfolder=f"comfyfleet-{job.id}", overwrite=True)
            except ComfyError as exc:
                raise AttemptEnded(Ending(EndKind.ENDPOINT_LOST, f"could not upload {item.name}: {exc}")) from None
            names[item.name] = uploaded.load_image_value
        return rename_input_images(job.workflow, names)

    async def _store_outputs(self, client: ComfyClient, job: Job, result: RunResult) -> list[OutputFile]:
        stored: list[OutputFile] = []
        for ref in result.outputs:
            try:
                data = await client.view(ref)
            except ComfyError as exc:
                raise AttemptEnded(Ending(EndKind.ENDPOINT_LOST,
                                          f"could not fetch output {ref.filename}: {exc}")) from None
            content_type = mimetypes.guess_type(ref.filename)[0] or "application/octet-stream"
            stored.append(await self._store_one(job, ref.node_id, ref.filename, data, content_type))
        return stored

    async def _store_one(self, job: Job, node_id: str, filename: str, data: bytes, content_type: str) -> OutputFile:
        """Convert per job.output, store, embed inline when asked; a failing store is retried with backoff for
        `store_retry_seconds` (the output stays on the pod meanwhile), then the job fails with storage_error."""
        deadline = time.monotonic() + self.ctx.settings.store_retry_seconds
        delay = 0.5
        while True:
            try:
                result: OutputFile = await self.ctx.io(store_output, self.ctx.store, job, node_id, filename, data,
                                                       content_type, self.ctx.settings.output_inline_max_bytes)
                return result
            except StorageError as exc:
                if time.monotonic() + delay > deadline:
                    self._cleanup = None  # the outputs stay on the pod, with the prompt's history entry
                    raise AttemptEnded(Ending(EndKind.STORAGE, f"{exc} (retried for "
                                              f"{self.ctx.settings.store_retry_seconds:.0f} s)")) from None
                log.warning("job %s: storing %s failed (%s); retrying in %.1f s", job.id, filename, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 8.0)

    # --- settling ---------------------------------------------------------------------------------
    async def _settle(self, ending: Ending) -> Settled:
        """Write the decision for this ending; the stored record may have moved (a cancel flag): re-read once."""
        outputs = self.outputs if ending.kind is EndKind.SUCCEEDED else None
        await self.announced()
        # First from the runner's own view of the record (self.job: the record as read, plus every change the
        # runner wrote since), guarded by the stored cancel flag, which only others set; a record that moved
        # meanwhile is read again.
        known = self.job
        while True:
            guard: tuple[str, ...] = ()
            if known is not None:
                current, known, guard = known, None, ("cancel_requested",)
            else:
                fresh = await self.durable(self.ctx.repo.get, self.job_id)
                if fresh is None:
                    return Settled(None, held_prompt=self.held_prompt)
                current = fresh
            if current.state.is_terminal:
                return Settled(current, held_prompt=self.held_prompt)
            decision = decide(ending, cancel_requested=current.cancel_requested or self.cancelled.is_set(),
                              attempts=current.attempts, max_attempts=current.max_attempts)
            after = _apply(current, decision, outputs)
            try:
                written = await self.durable(self.ctx.repo.write, current, after, "state", guard)
            except StateChanged:
                continue
            except JobNotFound:
                return Settled(None, held_prompt=self.held_prompt)
            if decision.state is JobState.QUEUED:
                log.warning("job %s attempt %d failed (%s), retrying", self.job_id, current.attempts,
                            decision.error.message if decision.error else "")
            elif decision.state is not JobState.SUCCEEDED:
                log.info("job %s %s: %s", self.job_id, decision.state.value,
                         decision.error.message if decision.error else "")
            if decision.endpoint_unhealthy and self.endpoint is not None:
                await self.best_effort(self.ctx.registry.mark_unhealthy, self.endpoint.id, ending.message)
            await self.ctx.io(hooks.observe_finished, written, self.obs)  # HOOK(observability): metrics + spans
            return Settled(written, decision, held_prompt=self.held_prompt)

    async def announced(self) -> None:
        """The job's first event is written: every later write of the record (its own event) comes after it."""
        if self._announced is not None:
            await asyncio.shield(self._announced)

    async def mark_running(self) -> None:
        await self.announced()
        for _ in range(3):  # another writer may have changed the record meanwhile: re-read and try again
            job = self.job
            if job is None or job.state is JobState.RUNNING or not can_transition(job.state, JobState.RUNNING):
                return
            try:
                # Guarded by the cancel flag as well: a cancel whose message this run missed shows here.
                self.job = await self.durable(functools.partial(self.ctx.repo.write, guard=("cancel_requested",)),
                                              job, transition(job, JobState.RUNNING))
                return
            except JobNotFound:
                return
            except StateChanged:
                fresh = await self.durable(self.ctx.repo.get, self.job_id)
                if fresh is None:
                    return
                self.job = fresh
                if fresh.cancel_requested:
                    self.cancelled.set()


def _apply(job: Job, decision: Decision, outputs: list[OutputFile] | None) -> Job:
    after = transition(job, decision.state, error=decision.error)
    if outputs is not None:
        after = after.model_copy(update={"outputs": outputs})
    return after


def _elapsed_since(moment: datetime | None) -> float:
    return (utcnow() - moment).total_seconds() if moment is not None else 0.0


class ProgressWriter:
    """ComfyUI events -> the job's RUNNING state and progress field, coalesced to one write per interval.

    Progress is written by one writer task per job, never by the event handler itself: the websocket's events
    (the prompt's end above all, which frees the pod) are never held up by a progress write in flight, and the
    writes land in order (each writes the newest progress; none overtakes another)."""

    def __init__(self, run: JobRun, tracker: ProgressTracker):
        self.run = run
        self.tracker = tracker
        self.latest: Any = None
        self.written: Any = None
        self.last_write = 0.0
        self._milestones: list[Any] = []  # a node's start and last step: each written, in order, without waiting
        self._closing = False
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None

    async def on_event(self, event: ComfyEvent) -> None:
        hooks.note_comfy_event(self.run.obs, event)  # HOOK(observability): the pod's execution timestamps
        if isinstance(event, ExecutionStart):
            await self.run.mark_running()
            return
        if isinstance(event, ExecutionSuccess):  # the pod is done with the prompt: free it before /history
            freeing = self.run.free_pod()
            if freeing is not None:  # and let its next prompt go first (bounded: HAND_ON_WAIT_SECONDS)
                await asyncio.shield(freeing)
            return
        if isinstance(event, ExecutionCached):
            self.latest = self.tracker.cached(event.nodes)
        elif isinstance(event, Executing) and event.node is not None:
            self.latest = self.tracker.executing(event.node)
        elif isinstance(event, Progress):
            self.latest = self.tracker.step(event.value, event.max, event.node)
        else:
            return
        # Steps inside a node are coalesced; a node's start and its last step are always written.
        known, latest = self._milestones[-1] if self._milestones else self.written, self.latest
        if known is None or latest.node != known.node or (latest.max and latest.value >= latest.max):
            self._milestones.append(latest)
        self._wake.set()
        if self._writer is None and not self._closing:
            self._writer = asyncio.create_task(self._write_loop(), name=f"progress of {self.run.job_id}")

    async def _write_loop(self) -> None:
        while True:
            if self._milestones:
                await self._write(self._milestones.pop(0))
                continue
            if self.latest is None or self.latest == self.written:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if not self._closing:
                delay = self.last_write + PROGRESS_INTERVAL_SECONDS - time.monotonic()
                if delay > 0:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), delay)
                    continue  # the interval passed, or a milestone came: look again
            await self._write(self.latest)

    async def _write(self, progress: Any) -> None:
        if progress == self.written:
            return
        self.written = progress
        job = self.run.job
        if job is None or job.state.is_terminal:
            return
        self.last_write = time.monotonic()
        job = job.model_copy(update={"progress": progress})
        self.run.job = job
        await self.run.announced()
        await self.run.best_effort(self.run.ctx.repo.set_progress, job)

    async def flush(self) -> None:
        """Write what is left now and stop the writer (its writes have all landed when this returns)."""
        self._closing = True
        self._wake.set()
        if self._writer is not None:
            await asyncio.shield(self._writer)


async def wait_prompt_gone(client: ComfyClient, prompt_id: str) -> bool:
    """Poll the pod's queue until prompt_id has left it; False if it is still there after HOLD_LIMIT_SECONDS."""
    deadline = time.monotonic() + HOLD_LIMIT_SECONDS
    while time.monotonic() < deadline:
        try:
            if prompt_id not in await client.queue():
                return True
        except ComfyError as exc:
            log.info("holding endpoint %s for prompt %s: queue unreadable (%s)", client.base_url, prompt_id, exc)
        await asyncio.sleep(HOLD_POLL_SECONDS)
    return False


def on_rq_failure(job: Any, connection: Any, exc_type: Any, exc_value: Any, tb: Any) -> None:
    """RQ failure callback, for RQ's own abandoned-job cleanup (an execution whose heartbeats stopped while no
    dispatcher adopted it): settle the record when RQ gives up. A job still in flight is left to the
    dispatcher that adopts it."""
    import redis

    from comfyfleet.dispatch.service import Dispatcher
    from comfyfleet.jobs.model import ErrorCode, JobError
    from comfyfleet.keys import as_text

    if (job.retries_left or 0) > 0:
        return  # RQ will run it again; the record is (or will be) back in QUEUED
    settings = DispatchSettings()
    conn = redis.Redis.from_url(settings.redis_url)
    try:
        d = Dispatcher(conn, settings)
        if conn.zscore(d.keys.inflight, job.id) is not None:
            return
        message = f"the job failed outside its dispatcher: {exc_type.__name__ if exc_type else 'unknown'}: {exc_value}"
        error = JobError(code=ErrorCode.WORKER_LOST, message=message)
        with contextlib.suppress(JobNotFound):
            failed = d.repo.update(job.id, lambda j: j if j.state.is_terminal else transition(j, JobState.FAILED,
                                                                                               error=error))
            if failed.error == error:  # HOOK(observability): outcome of a job lost outside any dispatcher
                hooks.observe_finished(failed)
        endpoint = conn.get(d.keys.claim(job.id))
        if endpoint:
            d.registry.release_lease(as_text(endpoint), job.id)
        d.scheduler.wake()
    finally:
        conn.close()
