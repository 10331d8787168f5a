"""What a job's life turns into as job-level metrics: a table of situations, and the sinks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from comfyfleet.jobs.model import ErrorCode, Job, JobError, JobState
from comfyfleet.observability.hooks import note_comfy_event, note_outputs_stored, note_prompt_finished, start_attempt
from comfyfleet.observability.metrics import (
    JOB_METRICS,
    Attempt,
    JobMetrics,
    Observation,
    attempt_observations,
    claim_observations,
    template_label,
)

T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


def job(**kw) -> Job:
    base = {"owner": "alice", "workflow": {}, "created_at": T0, "updated_at": T0}
    return Job(**{**base, **kw})


def attempt(**kw) -> Attempt:
    base = {"job_id": "j", "attempt": 1, "endpoint": "url:http://pod-a:8188", "pool": "sdxl", "template": "txt2img",
            "dispatched_at": T0.timestamp() + 10}
    return Attempt(**{**base, **kw})


def by_metric(obs: list[Observation]) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for o in obs:
        out.setdefault(o.metric, []).append((o.labels, o.value))
    return out


@pytest.mark.parametrize(("record", "expected"), [
    # first attempt: waited from created to dispatched
    (job(template="txt2img", attempts=1, dispatched_at=T0 + timedelta(seconds=7)), 7.0),
    # clock skew between processes never makes a negative wait
    (job(attempts=1, dispatched_at=T0 - timedelta(seconds=1)), 0.0),
])
def test_queue_wait_of_a_first_attempt(record, expected):
    [obs] = claim_observations(record, "sdxl")
    assert obs.metric == "comfyfleet_job_queue_wait_seconds"
    assert obs.value == pytest.approx(expected)
    assert obs.labels == {"pool": "sdxl", "template": template_label(record.template)}


@pytest.mark.parametrize("record", [
    job(attempts=2, dispatched_at=T0 + timedelta(seconds=60)),  # a retry: its wait is mostly its backoff
    job(attempts=0),  # not dispatched
])
def test_no_queue_wait_for_retries_or_undispatched_records(record):
    assert claim_observations(record, "sdxl") == []


@pytest.mark.parametrize(("template", "label"), [("txt2img", "txt2img"), (None, "custom"), ("made-up", "other")])
def test_template_label_is_bounded(template, label):
    assert template_label(template) == label


def test_a_succeeded_attempt_tells_every_timing_from_the_pods_clock():
    a = attempt(prompt_started_at=T0.timestamp() + 10.05, prompt_finished_at=T0.timestamp() + 14,
                outputs_stored_at=T0.timestamp() + 14.02,
                pod_events=[("execution_start", 1_000), ("execution_cached", 1_001), ("execution_success", 4_500)])
    obs = by_metric(attempt_observations(job(state=JobState.SUCCEEDED, template="txt2img", attempts=1), a))
    assert obs["comfyfleet_job_execution_seconds"] == [({"pool": "sdxl", "template": "txt2img"}, 3.5)]
    assert obs["comfyfleet_endpoint_busy_seconds_total"] == [({"pool": "sdxl", "endpoint": a.endpoint}, 3.5)]
    overhead = {labels["phase"]: value for labels, value in obs["comfyfleet_job_dispatch_overhead_seconds"]}
    assert overhead == {"claim_to_prompt": pytest.approx(0.05), "finish_to_stored": pytest.approx(0.02)}
    assert obs["comfyfleet_job_outcomes_total"] == [
        ({"pool": "sdxl", "template": "txt2img", "state": "succeeded", "error_code": "none"}, 1)]
    assert "comfyfleet_job_retries_total" not in obs


def test_without_pod_timestamps_execution_falls_back_to_our_clock():
    a = attempt(prompt_started_at=100.0, prompt_finished_at=102.5)
    obs = by_metric(attempt_observations(job(state=JobState.SUCCEEDED), a))
    assert obs["comfyfleet_job_execution_seconds"][0][1] == 2.5


@pytest.mark.parametrize(("record", "run", "counted"), [
    # a retryable failure back in the queue: a retry by reason, no outcome yet
    (job(state=JobState.QUEUED, attempts=1, error=JobError(code=ErrorCode.WORKER_LOST, message="x")), True,
     {"comfyfleet_job_retries_total": {"pool": "sdxl", "reason": "worker_lost"}}),
    # a final failure: outcome by error code
    (job(state=JobState.FAILED, error=JobError(code=ErrorCode.TIMEOUT, message="x")), True,
     {"comfyfleet_job_outcomes_total": {"pool": "sdxl", "template": "custom", "state": "failed",
                                        "error_code": "timeout"}}),
    # cancelled while running
    (job(state=JobState.CANCELLED, error=JobError(code=ErrorCode.CANCELLED, message="x")), True,
     {"comfyfleet_job_outcomes_total": {"pool": "sdxl", "template": "custom", "state": "cancelled",
                                        "error_code": "cancelled"},
      "comfyfleet_job_cancels_total": {"pool": "sdxl", "stage": "running"}}),
    # cancelled in the queue: never reached a pool
    (job(state=JobState.CANCELLED, pool="anything-a-user-typed",
         error=JobError(code=ErrorCode.CANCELLED, message="x")), False,
     {"comfyfleet_job_outcomes_total": {"pool": "unassigned", "template": "custom", "state": "cancelled",
                                        "error_code": "cancelled"},
      "comfyfleet_job_cancels_total": {"pool": "unassigned", "stage": "queued"}}),
    # failed fast: no endpoint can run it
    (job(state=JobState.FAILED, error=JobError(code=ErrorCode.NO_CAPABLE_WORKER, message="x")), False,
     {"comfyfleet_job_outcomes_total": {"pool": "unassigned", "template": "custom", "state": "failed",
                                        "error_code": "no_capable_worker"}}),
])
def test_outcomes_retries_and_cancels(record, run, counted):
    obs = by_metric(attempt_observations(record, attempt() if run else None))
    counters = {m: v for m, v in obs.items() if JOB_METRICS[m].kind == "counter"}
    assert {m: labels for m, [(labels, _)] in counters.items()} == counted


def test_no_label_ever_carries_a_user_or_a_job_id():
    record = job(state=JobState.SUCCEEDED, owner="alice", pool="user-typed")
    a = attempt(job_id=record.id, prompt_started_at=1.0, prompt_finished_at=2.0, outputs_stored_at=2.1,
                pod_events=[("execution_start", 1), ("execution_success", 2)])
    for o in attempt_observations(record, a) + claim_observations(job(attempts=1, dispatched_at=T0), "sdxl"):
        assert set(o.labels) == set(JOB_METRICS[o.metric].labels)
        assert not {"alice", record.id, "user-typed"} & set(o.labels.values())


def test_the_runner_notes_collect_an_attempt():
    record = job(state=JobState.DISPATCHED, attempts=2, dispatched_at=T0, template="txt2img")

    class Endpoint:
        id = "url:http://pod-a:8188"
        pool = "sdxl"

    class Event:
        def __init__(self, type_: str, timestamp: int | None):
            self.type, self.timestamp = type_, timestamp

    a = start_attempt(record, Endpoint.id, Endpoint())
    for e in (Event("execution_start", 5), Event("progress", None), Event("execution_success", 9)):
        note_comfy_event(a, e)
    note_prompt_finished(a)
    note_outputs_stored(a)
    assert (a.attempt, a.pool, a.dispatched_at) == (2, "sdxl", T0.timestamp())
    assert a.pod_events == [("execution_start", 5), ("execution_success", 9)]
    assert a.prompt_started_at is not None and a.prompt_finished_at is not None and a.outputs_stored_at is not None


def test_job_metrics_export_prometheus_names_and_types():
    m = JobMetrics()
    m.record([Observation("comfyfleet_job_queue_wait_seconds", {"pool": "p", "template": "custom"}, 1.5),
              Observation("comfyfleet_job_retries_total", {"pool": "p", "reason": "worker_lost"}, 1),
              Observation("comfyfleet_job_retries_total", {"pool": "p", "bogus": "x"}, 1)])  # malformed: dropped
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(m.registry).decode())}
    assert families["comfyfleet_job_queue_wait_seconds"].type == "histogram"
    assert families["comfyfleet_job_retries"].type == "counter"
    [retry] = [s for s in families["comfyfleet_job_retries"].samples if s.name.endswith("_total")]
    assert retry.labels == {"pool": "p", "reason": "worker_lost"} and retry.value == 1


def test_names_follow_prometheus_conventions():
    for name, spec in JOB_METRICS.items():
        assert name.startswith("comfyfleet_")
        if spec.kind == "counter":
            assert name.endswith("_total")
        else:
            assert name.endswith("_seconds"), "histograms here are durations, in base units"
        assert not {"user", "owner", "job_id", "job"} & set(spec.labels)
