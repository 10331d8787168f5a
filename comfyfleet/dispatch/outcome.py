"""How one attempt of a job ended, and what that means for the job: pure functions, table-tested.

The runner turns whatever happened (a ComfyUI result, an exception, a cancel or a timeout) into an `Ending`,
and `decide` turns the ending plus the job's cancel flag and attempt count into the job's next state. No I/O
here; the runner writes the decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from comfyfleet.comfy.errors import (
    ComfyError,
    ComfyPromptLost,
    ComfyUnavailable,
    ComfyValidationError,
)
from comfyfleet.comfy.models import RunResult
from comfyfleet.jobs.model import ErrorCode, JobError, JobState


class EndKind(StrEnum):
    SUCCEEDED = "succeeded"
    VALIDATION = "validation"  # ComfyUI refused the prompt (400)
    EXECUTION_ERROR = "execution_error"  # a node raised
    OUT_OF_MEMORY = "out_of_memory"  # a node raised an OOM: free the pod's memory, try again
    INTERRUPTED = "interrupted"  # the prompt was interrupted on the pod (by our cancel, or by someone else)
    TIMEOUT = "timeout"  # the job's own timeout passed; we interrupted it
    CANCELLED = "cancelled"  # a cancel arrived before the prompt was posted, or the run was abandoned for it
    ENDPOINT_LOST = "endpoint_lost"  # connection refused, socket gone, prompt vanished from the pod
    PROTOCOL = "protocol"  # the pod answered something ComfyUI never answers
    STORAGE = "storage"  # the output store refused the outputs
    NO_ENDPOINT = "no_endpoint"  # the endpoint leased for the job is not registered any more
    INTERNAL = "internal"  # a bug of ours


@dataclass(frozen=True)
class Ending:
    kind: EndKind
    message: str = ""
    details: dict[str, Any] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Decision:
    """The job's next state (QUEUED = retry), the error to record, and what to do with the endpoint."""

    state: JobState
    error: JobError | None = None
    endpoint_unhealthy: bool = False  # take it out of rotation until a probe succeeds
    free_memory: bool = False  # POST /free before the next job (after an out-of-memory)


_FINAL_CODES: dict[EndKind, ErrorCode] = {
    EndKind.VALIDATION: ErrorCode.VALIDATION,
    EndKind.EXECUTION_ERROR: ErrorCode.EXECUTION,
    EndKind.TIMEOUT: ErrorCode.TIMEOUT,
    EndKind.STORAGE: ErrorCode.STORAGE,
    EndKind.INTERNAL: ErrorCode.INTERNAL,
}
_RETRYABLE_CODES: dict[EndKind, ErrorCode] = {
    EndKind.OUT_OF_MEMORY: ErrorCode.OUT_OF_MEMORY,
    EndKind.INTERRUPTED: ErrorCode.WORKER_LOST,
    EndKind.ENDPOINT_LOST: ErrorCode.WORKER_LOST,
    EndKind.PROTOCOL: ErrorCode.WORKER_LOST,
    EndKind.NO_ENDPOINT: ErrorCode.WORKER_LOST,
}


def decide(ending: Ending, *, cancel_requested: bool, attempts: int, max_attempts: int) -> Decision:
    """The job's next state after an attempt ended.

    A success stands even if a cancel came too late to stop it. Otherwise a requested cancel wins over any
    other ending (an interrupt we caused is not a failure). Retryable endings go back to the queue while
    attempts remain, else fail with the same error.
    """
    if ending.kind is EndKind.SUCCEEDED:
        return Decision(JobState.SUCCEEDED)
    unhealthy = ending.kind is EndKind.ENDPOINT_LOST
    if cancel_requested or ending.kind is EndKind.CANCELLED:
        message = ending.message if ending.kind is EndKind.CANCELLED and ending.message else "cancelled while running"
        return Decision(JobState.CANCELLED, JobError(code=ErrorCode.CANCELLED, message=message),
                        endpoint_unhealthy=unhealthy)
    if ending.kind in _FINAL_CODES:
        return Decision(JobState.FAILED, JobError(code=_FINAL_CODES[ending.kind], message=ending.message,
                                                  details=ending.details))
    code = _RETRYABLE_CODES[ending.kind]
    error = JobError(code=code, message=ending.message, details=ending.details)
    state = JobState.QUEUED if attempts < max_attempts else JobState.FAILED
    return Decision(state, error, endpoint_unhealthy=unhealthy, free_memory=ending.kind is EndKind.OUT_OF_MEMORY)


def ending_of_result(result: RunResult) -> Ending:
    """A finished prompt's verdict from its /history entry (outputs are stored afterwards)."""
    if result.status == "success":
        return Ending(EndKind.SUCCEEDED)
    if result.status == "interrupted":
        return Ending(EndKind.INTERRUPTED, "the prompt was interrupted on its pod")
    failure = result.error
    if failure is None:
        return Ending(EndKind.EXECUTION_ERROR, "ComfyUI reported an error without details")
    if failure.is_oom:
        return Ending(EndKind.OUT_OF_MEMORY, failure.exception_message.strip())
    return Ending(
        EndKind.EXECUTION_ERROR,
        f"node {failure.node_id} ({failure.node_type}) failed: {failure.exception_type}: "
        f"{failure.exception_message.strip()}",
        {"node_id": failure.node_id, "node_type": failure.node_type, "exception_type": failure.exception_type,
         "exception_message": failure.exception_message},
    )


def ending_of_error(exc: BaseException, endpoint_url: str = "") -> Ending:
    """An attempt that raised instead of returning a result."""
    if isinstance(exc, ComfyValidationError):
        nodes = [
            {"node_id": n.node_id, "class_type": n.class_type,
             "errors": [{"type": e.type, "message": e.message, "details": e.details, "input_name": e.input_name}
                        for e in n.errors]}
            for n in exc.node_errors
        ]
        return Ending(EndKind.VALIDATION, str(exc), {"error_type": exc.error_type, "node_errors": nodes})
    if isinstance(exc, ComfyUnavailable | ComfyPromptLost):
        return Ending(EndKind.ENDPOINT_LOST, f"lost ComfyUI at {endpoint_url}: {exc}")
    if isinstance(exc, ComfyError):
        return Ending(EndKind.PROTOCOL, f"ComfyUI protocol error: {exc}")
    return Ending(EndKind.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
