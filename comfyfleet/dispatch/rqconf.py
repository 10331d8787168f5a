"""How comfyfleet uses RQ: serializer, the job function's import path, retry schedule."""

from __future__ import annotations

from rq import Retry
from rq.serializers import JSONSerializer

# JSON keeps queued payloads readable (`redis-cli` shows the job id argument) and language-neutral.
SERIALIZER = JSONSerializer
RUN_JOB = "comfyfleet.dispatch.runner.run_job"
ON_FAILURE = "comfyfleet.dispatch.runner.on_rq_failure"
# RQ's own hard timeout sits above ours: our runner interrupts the pod and records a clean timeout
# first; RQ kills the work horse only if that fails.
HARD_TIMEOUT_MARGIN_SECONDS = 60


def retry_policy(max_attempts: int, backoff_seconds: float) -> Retry | None:
    """max_attempts in all (so max_attempts - 1 retries), exponential backoff, whole seconds for RQ."""
    if max_attempts <= 1:
        return None
    intervals = [int(round(backoff_seconds * 2**i)) for i in range(max_attempts - 1)]
    return Retry(max=max_attempts - 1, interval=intervals)
