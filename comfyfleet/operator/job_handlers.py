"""GenerationJob handlers: queue the job once, mirror its record into status, cancel it on delete.

- create: validate the spec (invalid: phase Failed + PermanentError), build the same Job the API
  would, and submit it through the shared `Dispatcher` with idempotency key = metadata.uid. An
  operator that crashes after queueing but before kopf records the handler as done runs create
  again on restart and gets the first job back: exactly one job per GenerationJob.
- timer (until the phase is final): copy state, progress, outputs, error, attempts and times from
  the job record into status; it stops by itself once the phase is final (its `when` filter). The
  job is found by status.jobId or, when status has none, by the idempotency key: kopf records the
  create handler as done in one PATCH (metadata) and writes its status in a second (the status
  subresource), so an operator killed between the two leaves a queued job that status does not name
  and that create, recorded as done, never runs again to name.
- delete (kopf's finalizer): cancel a job that has not finished; a finished one is left alone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import kopf
import redis

from comfyfleet.jobs.model import Job
from comfyfleet.jobs.states import InvalidTransition
from comfyfleet.observability.logs import bind_job
from comfyfleet.operator.job_spec import InvalidJobSpec, build_job, owner_for, parse_spec
from comfyfleet.operator.job_status import invalid_spec_status, is_terminal, lost_job_status, status_for_job
from comfyfleet.operator.models import CREATE_RECORDED_ANNOTATION, namespace_of
from comfyfleet.operator.runtime import Runtime
from comfyfleet.store.jobrepo import JobNotFound


def job_not_final(status: Mapping[str, Any], annotations: Mapping[str, str], **_: Any) -> bool:
    """`when` filter of the status timer: the phase is not final yet, and the job was queued (status names it)
    or the create handler is recorded done (status may not name it yet). Never before that: a tick between the
    queueing and create's own status write could set a phase the write then takes back."""
    if is_terminal(status.get("phase")):
        return False
    return bool(status.get("jobId")) or CREATE_RECORDED_ANNOTATION in annotations


async def generationjob_create(
    body: kopf.Body, meta: kopf.Meta, namespace: str | None, uid: str, patch: kopf.Patch, memo: kopf.Memo,
    logger: kopf.Logger, **_: Any,
) -> None:
    """Validate and queue the job (idempotently), then record its jobId and phase in status."""
    rt: Runtime = memo.runtime
    ns = namespace_of(namespace)
    generation = meta.get("generation")
    try:
        job = build_job(parse_spec(body), uid=uid, namespace=ns, defaults=rt.job_defaults)
    except InvalidJobSpec as exc:
        patch.status.update(invalid_spec_status(str(exc), now=time.time(), generation=generation))
        kopf.warn(body, reason="InvalidSpec", message=str(exc))
        raise kopf.PermanentError(str(exc)) from None
    bind_job(job)  # job_id, pool, user on every line this handler logs (JSON logs)
    try:
        job, created = await asyncio.to_thread(rt.dispatcher.submit, job)
    except redis.RedisError as exc:
        raise kopf.TemporaryError(f"could not queue the job: {exc}",
                                  delay=rt.settings.job_sync_interval_seconds) from exc
    patch.status.update(status_for_job(job, now=time.time(), previous=body.get("status"), generation=generation,
                                       public_url=rt.settings.public_url))
    if created:
        rt.metrics.jobs_submitted.labels(ns).inc()
        kopf.info(body, reason="Queued", message=f"queued as job {job.id} (pool {job.pool or 'any'})")
    else:
        logger.info("already queued as job %s; not queueing again", job.id)


async def generationjob_sync(
    body: kopf.Body, meta: kopf.Meta, status: kopf.Status, namespace: str | None, uid: str, patch: kopf.Patch,
    memo: kopf.Memo, **_: Any,
) -> None:
    """Timer: mirror the job record into status until the job is final."""
    rt: Runtime = memo.runtime
    known = status.get("jobId")
    try:
        job_id, job = await asyncio.to_thread(_find_job, rt, namespace_of(namespace), uid, known)
    except redis.RedisError as exc:
        raise kopf.TemporaryError(f"could not read job {known or 'of ' + uid}: {exc}",
                                  delay=rt.settings.job_sync_interval_seconds) from exc
    if job_id is None:
        return  # not queued yet: the create handler has not run, or not that far
    now, generation = time.time(), meta.get("generation")
    if job is not None:
        bind_job(job)
    if job is None:
        new = lost_job_status(job_id, now=now, previous=status, generation=generation)
    else:
        new = status_for_job(job, now=now, previous=status, generation=generation, public_url=rt.settings.public_url)
    if not any(status.get(key) != value for key, value in new.items()):
        return
    patch.status.update(new)
    phase = new.get("phase")
    if is_terminal(phase) and phase != status.get("phase"):
        message = f"job {job_id} {str(phase).lower()}"
        if new.get("error"):
            message += f": {new['error'].get('code')}: {new['error'].get('message', '')}"
        (kopf.info if phase == "Succeeded" else kopf.warn)(body, reason=str(phase), message=message)


async def generationjob_delete(
    status: kopf.Status, namespace: str | None, uid: str, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    """Finalizer: cancel the job unless it already finished."""
    rt: Runtime = memo.runtime
    ns = namespace_of(namespace)
    try:
        job_id = status.get("jobId") or await asyncio.to_thread(_job_id_for, rt, ns, uid)
        if not job_id:
            return  # never queued (invalid spec, or deleted before the create handler ran)
        if is_terminal(status.get("phase")):
            return
        job = await asyncio.to_thread(rt.dispatcher.cancel, str(job_id))
    except (JobNotFound, InvalidTransition):
        return  # gone or finished meanwhile: nothing to cancel
    except redis.RedisError as exc:
        raise kopf.TemporaryError(f"could not cancel: {exc}",
                                  delay=rt.settings.job_sync_interval_seconds) from exc
    bind_job(job)
    logger.info("cancelled job %s (%s)", job.id, job.state.value)


def _find_job(rt: Runtime, namespace: str, uid: str, known: str | None) -> tuple[str | None, Job | None]:
    """The job status names (`known`), else the one queued for this GenerationJob; its record (None if gone)."""
    job_id = known or _job_id_for(rt, namespace, uid)
    return job_id, rt.dispatcher.repo.get(job_id) if job_id else None


def _job_id_for(rt: Runtime, namespace: str, uid: str) -> str | None:
    """The job a GenerationJob was queued as, from its idempotency key (status may not have it yet)."""
    raw = rt.dispatcher.conn.get(rt.dispatcher.keys.idempotency(owner_for(namespace), uid))
    return raw.decode() if isinstance(raw, bytes) else raw
