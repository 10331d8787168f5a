"""How an attempt's ending decides the job's next state: a table of situations."""

from __future__ import annotations

import pytest

from comfyfleet.comfy.errors import ComfyPromptLost, ComfyProtocolError, ComfyUnavailable
from comfyfleet.comfy.messages import ExecutionError
from comfyfleet.comfy.models import RunResult
from comfyfleet.dispatch.outcome import Ending, EndKind, decide, ending_of_error, ending_of_result
from comfyfleet.jobs.model import ErrorCode, JobState

Q, S, F, C = JobState.QUEUED, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED


@pytest.mark.parametrize(
    ("kind", "cancel", "attempts", "state", "code", "unhealthy"),
    [
        (EndKind.SUCCEEDED, False, 1, S, None, False),
        (EndKind.SUCCEEDED, True, 1, S, None, False),  # finished before the cancel could stop it
        (EndKind.VALIDATION, False, 1, F, ErrorCode.VALIDATION, False),
        (EndKind.EXECUTION_ERROR, False, 1, F, ErrorCode.EXECUTION, False),
        (EndKind.TIMEOUT, False, 1, F, ErrorCode.TIMEOUT, False),
        (EndKind.STORAGE, False, 1, F, ErrorCode.STORAGE, False),
        (EndKind.INTERNAL, False, 1, F, ErrorCode.INTERNAL, False),
        (EndKind.OUT_OF_MEMORY, False, 1, Q, ErrorCode.OUT_OF_MEMORY, False),
        (EndKind.OUT_OF_MEMORY, False, 3, F, ErrorCode.OUT_OF_MEMORY, False),
        (EndKind.ENDPOINT_LOST, False, 1, Q, ErrorCode.WORKER_LOST, True),
        (EndKind.ENDPOINT_LOST, False, 3, F, ErrorCode.WORKER_LOST, True),
        (EndKind.PROTOCOL, False, 2, Q, ErrorCode.WORKER_LOST, False),
        (EndKind.NO_ENDPOINT, False, 1, Q, ErrorCode.WORKER_LOST, False),
        # Interrupted by someone else: not the job's fault, run it again.
        (EndKind.INTERRUPTED, False, 1, Q, ErrorCode.WORKER_LOST, False),
        # Interrupted because we were asked to cancel: cancelled, never a failure or a retry.
        (EndKind.INTERRUPTED, True, 1, C, ErrorCode.CANCELLED, False),
        # A cancel whose node outlasted the grace period ends cancelled too (the endpoint is held separately).
        (EndKind.CANCELLED, True, 1, C, ErrorCode.CANCELLED, False),
        (EndKind.CANCELLED, False, 1, C, ErrorCode.CANCELLED, False),
        # Any other ending of a job whose cancel was requested is a cancel.
        (EndKind.ENDPOINT_LOST, True, 1, C, ErrorCode.CANCELLED, True),
        (EndKind.TIMEOUT, True, 1, C, ErrorCode.CANCELLED, False),
        (EndKind.EXECUTION_ERROR, True, 1, C, ErrorCode.CANCELLED, False),
    ],
)
def test_decide(kind, cancel, attempts, state, code, unhealthy):
    decision = decide(Ending(kind, "why"), cancel_requested=cancel, attempts=attempts, max_attempts=3)
    assert decision.state is state
    assert (decision.error.code if decision.error else None) == code
    assert decision.endpoint_unhealthy is unhealthy
    assert decision.free_memory is (kind is EndKind.OUT_OF_MEMORY and not cancel)


def _error(exception_type: str, message: str) -> ExecutionError:
    return ExecutionError("4", "KSampler", exception_type, message, prompt_id="p")


@pytest.mark.parametrize(
    ("result", "kind"),
    [
        (RunResult("p", "success"), EndKind.SUCCEEDED),
        (RunResult("p", "interrupted"), EndKind.INTERRUPTED),
        (RunResult("p", "error"), EndKind.EXECUTION_ERROR),
        (RunResult("p", "error", error=_error("ValueError", "bad")), EndKind.EXECUTION_ERROR),
        (RunResult("p", "error", error=_error("torch.OutOfMemoryError", "CUDA out of memory")),
         EndKind.OUT_OF_MEMORY),
    ],
)
def test_ending_of_result(result, kind):
    assert ending_of_result(result).kind is kind


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (ComfyUnavailable("refused"), EndKind.ENDPOINT_LOST),
        (ComfyPromptLost("p", "gone"), EndKind.ENDPOINT_LOST),
        (ComfyProtocolError("teapot", status_code=418), EndKind.PROTOCOL),
        (KeyError("bug"), EndKind.INTERNAL),
    ],
)
def test_ending_of_error(exc, kind):
    assert ending_of_error(exc, "http://pod").kind is kind
