"""Which job changes cause notifications, and the retry schedule (pure)."""

from __future__ import annotations

import pytest

from comfyfleet.jobs.model import Job, JobState, WebhookDelivery, WebhookSpec
from comfyfleet.webhooks.deliverer import RetryPolicy
from comfyfleet.webhooks.outbox import delivery_id, due_events

Q, R, S, F, C = JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED


def job(state: JobState, *, on_start: bool = False, sent: tuple[str, ...] = (), hook: bool = True) -> Job:
    return Job(owner="alice", workflow={}, state=state,
               webhook=WebhookSpec(url="https://h.example/x", on_start=on_start) if hook else None,
               webhook_deliveries=[WebhookDelivery(id=f"m{i}", event=e) for i, e in enumerate(sent)])


@pytest.mark.parametrize(("before", "after", "events"), [
    (job(R), job(S), ["job.succeeded"]),
    (job(R), job(F), ["job.failed"]),
    (job(Q), job(C), ["job.cancelled"]),
    (job(Q), job(R), []),  # start not asked for
    (job(Q, on_start=True), job(R, on_start=True), ["job.started"]),
    (job(Q, on_start=True), job(R, on_start=True, sent=("job.started",)), []),  # second attempt: once only
    (job(R, on_start=True), job(R, on_start=True), []),  # progress while running
    (job(S), job(S), []),  # a later write to a finished job (e.g. a delivery update)
    (job(R, hook=False), job(S, hook=False), []),
    (None, job(C), ["job.cancelled"]),
])
def test_due_events(before: Job | None, after: Job, events: list[str]) -> None:
    assert due_events(before, after) == events


def test_delivery_ids_are_stable_per_job_and_event() -> None:
    a = delivery_id("0b3c-11", "job.succeeded")
    assert a == delivery_id("0b3c-11", "job.succeeded") == "msg_0b3c11_succeeded"
    assert a != delivery_id("0b3c-11", "job.started")


@pytest.mark.parametrize(("attempts", "now", "due"), [
    (1, 100.0, 105.0),  # 5 s after the first failure
    (2, 100.0, 110.0),
    (4, 100.0, 140.0),
    (10, 100.0, 160.0),  # capped at 60 s
    (3, 990.0, None),  # 990 + 20 is past the 1000 s window from creation at 0
])
def test_retry_schedule(attempts: int, now: float, due: float | None) -> None:
    policy = RetryPolicy(backoff_seconds=5, backoff_max_seconds=60, window_seconds=1000)
    assert policy.next_due(attempts, created=0.0, now=now) == due


def test_records_written_before_the_integration_fields_still_parse() -> None:
    old = ('{"id": "j1", "owner": "alice", "workflow": {}, "state": "succeeded", "outputs": '
           '[{"filename": "a.png", "node_id": "9", "key": "alice/j1/a.png"}]}')
    job = Job.model_validate_json(old)
    assert job.webhook is None and job.webhook_deliveries == [] and job.output is None
    assert job.outputs[0].data is None and due_events(None, job) == []
