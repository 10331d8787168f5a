"""The RQ job function: run one job on the pod its claim leased, track it, store outputs, settle its state.

RQ calls `run_job(job_id)` in a work horse; everything else is resolved inside from settings and Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mimetypes
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis

from comfyfleet.comfy.client import ComfyClient
from comfyfleet.comfy.errors import ComfyError, ComfyPromptLost, ComfyUnavailable, ComfyValidationError
from comfyfleet.comfy.messages import ComfyEvent, Executing, ExecutionCached, ExecutionStart, Progress
from comfyfleet.comfy.models import RunResult
from comfyfleet.dispatch.registry import Endpoint, Registry
from comfyfleet.dispatch.scheduler import Scheduler
from comfyfleet.dispatch.service import Dispatcher
from comfyfleet.jobs.model import ErrorCode, Job, JobError, JobState, OutputFile
from comfyfleet.jobs.progress import ProgressTracker
from comfyfleet.jobs.states import can_transition, transition
from comfyfleet.jobs.workflow import rename_input_images
from comfyfleet.keys import Keys
from comfyfleet.settings import DispatchSettings
from comfyfleet.store.factory import output_store
from comfyfleet.store.jobrepo import JobRepo
from comfyfleet.store.outputs import OutputStore, StorageError
from comfyfleet.usage import record_run_usage

log = logging.getLogger(__name__)
T = TypeVar("T")

# After asking the pod to interrupt, wait this long for ComfyUI to reach a node boundary before giving up.
CANCEL_GRACE_SECONDS = 15.0
# How often the runner looks for a cancel request while the job runs.
CANCEL_POLL_SECONDS = 0.25


class RetryableJobError(Exception):
    """Raised to RQ so its Retry policy schedules the next attempt (the record is already back in QUEUED)."""


class JobOutcome(Exception):
    """Internal: how a run ended, carried to the one place that settles the job's state."""

    def __init__(self, error: JobError):
        super().__init__(error.message)
        self.error = error


@dataclass
class RunnerContext:
    settings: DispatchSettings
    conn: redis.Redis
    keys: Keys
    repo: JobRepo
    registry: Registry
    scheduler: Scheduler
    store: OutputStore

    @classmethod
    def from_settings(cls, settings: DispatchSettings | None = None) -> RunnerContext:
        settings = settings or DispatchSettings()
        conn = redis.Redis.from_url(settings.redis_url)
        d = Dispatcher(conn, settings)
        return cls(settings, conn, d.keys, d.repo, d.registry, d.scheduler, output_store(settings))


def run_job(job_id: str) -> dict[str, Any]:
    """RQ entry point: run job_id to a final state (or back to the queue for a retry)."""
    ctx = RunnerContext.from_settings()
    try:
        return asyncio.run(JobRun(ctx, job_id).execute())
    finally:
        ctx.conn.close()


def on_rq_failure(job: Any, connection: redis.Redis, exc_type: Any, exc_value: Any, tb: Any) -> None:
    """RQ failure callback: settle the record when RQ gives up (hard timeout, lost worker, no retries left)."""
    if (job.retries_left or 0) > 0:
        return  # RQ will run it again; the record is (or will be) back in QUEUED
    ctx = RunnerContext.from_settings()
    try:
        message = f"the job failed outside its runner: {exc_type.__name__ if exc_type else 'unknown'}: {exc_value}"
        error = JobError(code=ErrorCode.WORKER_LOST, message=message)
        record = ctx.repo.get(job.id)
        if record is not None and not record.state.is_terminal:
            ctx.repo.update(job.id, lambda j: transition(j, JobState.FAILED, error=error))
        endpoint = ctx.conn.get(ctx.keys.claim(job.id))
        if endpoint:
            ctx.registry.release_lease(endpoint.decode(), job.id)
        ctx.scheduler.wake()
    finally:
        ctx.conn.close()


class JobRun:
    """One attempt of one job on one pod."""

    def __init__(self, ctx: RunnerContext, job_id: str):
        self.ctx = ctx
        self.job_id = job_id
        self.endpoint_id: str | None = None

    async def io(self, fn: Callable[..., T], *args: Any) -> T:
        """Redis and file calls run in a thread so the websocket loop never blocks on them."""
        return await asyncio.to_thread(fn, *args)

    async def update(self, change: Callable[[Job], Job], event: str = "state") -> Job:
        return await self.io(self.ctx.repo.update, self.job_id, change, event)

    async def execute(self) -> dict[str, Any]:
        job = await self.io(self.ctx.repo.get, self.job_id)
        if job is None or job.state.is_terminal:
            await self.io(self._release)
            return {"job_id": self.job_id, "state": job.state.value if job else "missing"}
        raw = await self.io(self.ctx.conn.get, self.ctx.keys.claim(self.job_id))
        self.endpoint_id = raw.decode() if raw else None
        endpoint = await self.io(self.ctx.registry.get, self.endpoint_id) if self.endpoint_id else None
        renewer = asyncio.create_task(self._renew_lease())
        try:
            if endpoint is None:
                raise JobOutcome(JobError(code=ErrorCode.WORKER_LOST, message="the pod leased for this job is gone"))
            if job.cancel_requested:  # cancelled between its claim and this work horse starting
                raise JobOutcome(JobError(code=ErrorCode.CANCELLED, message="cancelled before it started"))
            if job.state is JobState.QUEUED:  # claimed by a worker that did not mark it (defensive)
                job = await self.update(lambda j: transition(j, JobState.DISPATCHED, worker=endpoint.id))
            final = await self._run_on(endpoint, job)
        except JobOutcome as outcome:
            final = await self._settle_failure(outcome.error)
        except Exception as exc:  # noqa: BLE001 - any bug must still settle the job, never leave it running
            log.exception("job %s: unexpected error", self.job_id)
            final = await self._settle_failure(JobError(code=ErrorCode.INTERNAL, message=f"internal error: {exc}"))
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            await self.io(self._release)
        if final.state is JobState.QUEUED:
            raise RetryableJobError(final.error.message if final.error else "retrying")
        return {"job_id": self.job_id, "state": final.state.value}

    def _release(self) -> None:
        if self.endpoint_id:
            self.ctx.registry.release_lease(self.endpoint_id, self.job_id)
        self.ctx.conn.delete(self.ctx.keys.claim(self.job_id))
        self.ctx.scheduler.wake()

    async def _renew_lease(self) -> None:
        ttl = self.ctx.settings.lease_ttl_seconds
        while self.endpoint_id:
            await asyncio.sleep(ttl / 3)
            held = await self.io(self.ctx.registry.renew_lease, self.endpoint_id, self.job_id, ttl)
            if not held:
                log.warning("job %s lost its lease on %s", self.job_id, self.endpoint_id)

    async def _run_on(self, endpoint: Endpoint, job: Job) -> Job:
        settings = self.ctx.settings
        tracker = ProgressTracker(total_nodes=len(job.workflow))
        async with ComfyClient(endpoint.url) as client:
            workflow = await self._upload_inputs(client, job)
            run = asyncio.create_task(
                client.run(workflow, job.id, self._on_event(tracker),
                           silence_timeout=settings.silence_timeout_seconds, resume=job.attempts > 1)
            )
            watcher = asyncio.create_task(self._watch_cancel(client, run))
            try:
                remaining = job.timeout_seconds
                result = await asyncio.wait_for(asyncio.shield(run), timeout=remaining)
            except TimeoutError:
                await self._abort(client, run)
                raise JobOutcome(JobError(code=ErrorCode.TIMEOUT,
                                          message=f"job exceeded its timeout of {job.timeout_seconds} s")) from None
            except ComfyValidationError as exc:
                raise JobOutcome(validation_error(exc)) from None
            except (ComfyUnavailable, ComfyPromptLost) as exc:
                await self.io(self.ctx.registry.mark_unhealthy, endpoint.id, str(exc))
                raise JobOutcome(JobError(code=ErrorCode.WORKER_LOST,
                                          message=f"lost ComfyUI at {endpoint.url}: {exc}")) from None
            except ComfyError as exc:
                error = JobError(code=ErrorCode.WORKER_LOST, message=f"ComfyUI protocol error: {exc}")
                raise JobOutcome(error) from None
            finally:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            return await self._finish(client, result)

    async def _upload_inputs(self, client: ComfyClient, job: Job) -> dict[str, Any]:
        """Upload the job's input images to the pod (own subfolder per job) and point LoadImage at them."""
        if not job.inputs:
            return job.workflow
        names: dict[str, str] = {}
        for item in job.inputs:
            try:
                data = await self.io(self.ctx.store.read, item.key)
            except StorageError as exc:
                raise JobOutcome(JobError(code=ErrorCode.STORAGE, message=str(exc))) from None
            try:
                uploaded = await client.upload_image(data, item.name, subfolder=f"comfyfleet-{job.id}", overwrite=True)
            except (ComfyUnavailable, ComfyError) as exc:
                raise JobOutcome(JobError(code=ErrorCode.WORKER_LOST,
                                          message=f"could not upload {item.name}: {exc}")) from None
            names[item.name] = uploaded.load_image_value
        return rename_input_images(job.workflow, names)

    def _on_event(self, tracker: ProgressTracker) -> Callable[[ComfyEvent], Awaitable[None]]:
        async def handle(event: ComfyEvent) -> None:
            if isinstance(event, ExecutionStart):
                await self.update(lambda j: transition(j, JobState.RUNNING) if can_transition(j.state, JobState.RUNNING)
                                  and j.state is not JobState.RUNNING else j)
                return
            if isinstance(event, ExecutionCached):
                progress = tracker.cached(event.nodes)
            elif isinstance(event, Executing) and event.node is not None:
                progress = tracker.executing(event.node)
            elif isinstance(event, Progress):
                progress = tracker.step(event.value, event.max, event.node)
            else:
                return
            await self.update(lambda j: j.model_copy(update={"progress": progress}), event="progress")

        return handle

    async def _watch_cancel(self, client: ComfyClient, run: asyncio.Task[RunResult]) -> None:
        while not run.done():
            await asyncio.sleep(CANCEL_POLL_SECONDS)
            job = await self.io(self.ctx.repo.get, self.job_id)
            if job is not None and job.cancel_requested:
                log.info("job %s: cancel requested, interrupting it on its pod", self.job_id)
                await self._abort(client, run)
                return

    async def _abort(self, client: ComfyClient, run: asyncio.Task[RunResult]) -> None:
        """Delete the prompt from the pod's queue and interrupt it; stop waiting after a grace period."""
        try:
            await asyncio.wait_for(client.cancel(self.job_id), timeout=5)
        except (ComfyError, TimeoutError) as exc:
            log.warning("job %s: interrupt on pod failed: %s", self.job_id, exc)
        try:
            await asyncio.wait_for(asyncio.shield(run), timeout=CANCEL_GRACE_SECONDS)
        except (TimeoutError, ComfyError):
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError, ComfyError):
                await run
        await record_run_usage(client, self.ctx.conn, self.ctx.keys, self.ctx.repo, self.job_id)  # HOOK(reliability)

    async def _finish(self, client: ComfyClient, result: RunResult) -> Job:
        await record_run_usage(client, self.ctx.conn, self.ctx.keys, self.ctx.repo, self.job_id)  # HOOK(reliability)
        job = await self.io(self.ctx.repo.require, self.job_id)
        if result.status == "interrupted":
            if job.cancel_requested:
                err = JobError(code=ErrorCode.CANCELLED, message="cancelled while running")
                return await self.update(lambda j: transition(j, JobState.CANCELLED, error=err))
            raise JobOutcome(JobError(code=ErrorCode.WORKER_LOST, message="the prompt was interrupted on its pod"))
        if result.status == "error":
            failure = result.error
            if failure is not None and failure.is_oom:
                with contextlib.suppress(ComfyError):
                    await client.free(unload_models=True, free_memory=True)
                raise JobOutcome(JobError(code=ErrorCode.OUT_OF_MEMORY, message=failure.exception_message.strip()))
            raise JobOutcome(execution_error(failure))
        outputs = await self._store_outputs(client, job, result)
        return await self.update(lambda j: transition(j, JobState.SUCCEEDED).model_copy(update={"outputs": outputs}))

    async def _store_outputs(self, client: ComfyClient, job: Job, result: RunResult) -> list[OutputFile]:
        stored: list[OutputFile] = []
        for ref in result.outputs:
            try:
                data = await client.view(ref)
            except ComfyError as exc:
                raise JobOutcome(JobError(code=ErrorCode.WORKER_LOST,
                                          message=f"could not fetch output {ref.filename}: {exc}")) from None
            content_type = mimetypes.guess_type(ref.filename)[0] or "application/octet-stream"
            try:
                stored.append(await self.io(self.ctx.store.put, job, ref.node_id, ref.filename, data, content_type))
            except StorageError as exc:
                raise JobOutcome(JobError(code=ErrorCode.STORAGE, message=str(exc))) from None
        return stored

    async def _settle_failure(self, error: JobError) -> Job:
        """Back to the queue when a retry can help and attempts remain; otherwise FAILED (or CANCELLED)."""
        job = await self.io(self.ctx.repo.require, self.job_id)
        if job.state.is_terminal:
            return job
        if job.cancel_requested:
            err = JobError(code=ErrorCode.CANCELLED, message="cancelled while running")
            return await self.update(lambda j: transition(j, JobState.CANCELLED, error=err))
        if error.retryable and job.attempts < job.max_attempts:
            log.warning("job %s attempt %d failed (%s), retrying", job.id, job.attempts, error.message)
            return await self.update(lambda j: transition(j, JobState.QUEUED, error=error))
        log.warning("job %s failed: %s", job.id, error.message)
        return await self.update(lambda j: transition(j, JobState.FAILED, error=error))


def validation_error(exc: ComfyValidationError) -> JobError:
    nodes = [
        {"node_id": n.node_id, "class_type": n.class_type,
         "errors": [{"type": e.type, "message": e.message, "details": e.details, "input_name": e.input_name}
                    for e in n.errors]}
        for n in exc.node_errors
    ]
    return JobError(code=ErrorCode.VALIDATION, message=str(exc),
                    details={"error_type": exc.error_type, "node_errors": nodes})


def execution_error(err: Any) -> JobError:
    if err is None:
        return JobError(code=ErrorCode.EXECUTION, message="ComfyUI reported an error without details")
    return JobError(
        code=ErrorCode.EXECUTION,
        message=f"node {err.node_id} ({err.node_type}) failed: {err.exception_type}: {err.exception_message.strip()}",
        details={"node_id": err.node_id, "node_type": err.node_type, "exception_type": err.exception_type,
                 "exception_message": err.exception_message},
    )
