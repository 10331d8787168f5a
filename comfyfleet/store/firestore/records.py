"""The Firestore document of a job (pure): top-level scalar fields, and the Job back from one."""

from __future__ import annotations

import json
from typing import Any

from comfyfleet.jobs.model import ErrorCode, Job, JobError, JobState, OutputFile, Progress
from comfyfleet.jobs.workflow import workflow_hash

SCHEMA_VERSION = 1


def workflow_summary(workflow: dict[str, Any]) -> dict[str, Any]:
    """What the record keeps of the graph: size, node types and a hash (the graph itself stays in Redis)."""
    types = sorted({str(n.get("class_type")) for n in workflow.values() if isinstance(n, dict)})
    return {"nodes": len(workflow), "class_types": types, "hash": workflow_hash(workflow)}


def job_record(job: Job) -> dict[str, Any]:
    """The Firestore document for a job: top-level scalar fields, so every query stays simple."""
    error = None
    if job.error is not None:
        # details can hold nested lists (node errors); Firestore forbids arrays in arrays, so keep them as JSON.
        error = {"code": job.error.code.value, "message": job.error.message,
                 "details_json": json.dumps(job.error.details, default=str) if job.error.details else None}
    return {
        "schema": SCHEMA_VERSION,
        "job_id": job.id,
        "owner": job.owner,
        "state": job.state.value,
        "source": job.source,
        "template": job.template,
        "workflow": workflow_summary(job.workflow),
        "params": job.params,
        "priority": job.priority,
        "pool": job.pool,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "timeout_seconds": job.timeout_seconds,
        "progress": job.progress.model_dump(),
        "error": error,
        "outputs": [o.model_dump() for o in job.outputs],
        "worker": job.endpoint,
        "cancel_requested": job.cancel_requested,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "dispatched_at": job.dispatched_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        # The paging cursor: the same float the API hands out as next_before, compared exactly.
        "created_ts": job.created_at.timestamp(),
    }


def job_from_record(doc: dict[str, Any]) -> Job:
    """A Job back from its record (the workflow graph is not kept: an empty graph stands in)."""
    raw_error = doc.get("error")
    error = None
    if raw_error:
        details = json.loads(raw_error["details_json"]) if raw_error.get("details_json") else None
        error = JobError(code=ErrorCode(raw_error["code"]), message=raw_error["message"], details=details)
    return Job(
        id=doc["job_id"], owner=doc["owner"], workflow={}, template=doc.get("template"),
        params=doc.get("params") or {}, priority=doc.get("priority", 5), pool=doc.get("pool"),
        state=JobState(doc["state"]), progress=Progress(**(doc.get("progress") or {})),
        attempts=doc.get("attempts", 0), max_attempts=doc.get("max_attempts", 3),
        timeout_seconds=doc.get("timeout_seconds", 300), error=error,
        outputs=[OutputFile(**o) for o in doc.get("outputs") or []], source=doc.get("source", "api"),
        endpoint=doc.get("worker"), cancel_requested=doc.get("cancel_requested", False),
        created_at=doc["created_at"], updated_at=doc.get("updated_at") or doc["created_at"],
        dispatched_at=doc.get("dispatched_at"), started_at=doc.get("started_at"), finished_at=doc.get("finished_at"),
    )
