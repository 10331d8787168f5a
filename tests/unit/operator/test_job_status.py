"""GenerationJob status from job states and job records, and progress normalisation."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import pytest

from comfyfleet.jobs.model import ErrorCode, Job, JobError, JobState, OutputFile, Progress
from comfyfleet.operator import job_status
from comfyfleet.operator.models import GenerationJobStatus

NOW = 1_700_000_000.0
NOW_TEXT = "2023-11-14T22:13:20Z"
GRAPH = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "t"}},
}


class FakeJobState(StrEnum):
    """Stands in for the job model's JobState: a str enum whose values are the state strings."""

    RUNNING = "running"


@pytest.mark.parametrize(
    ("state", "phase"),
    [
        ("queued", "Queued"),
        ("dispatched", "Dispatched"),
        ("running", "Running"),
        ("succeeded", "Succeeded"),
        ("failed", "Failed"),
        ("cancelled", "Cancelled"),
        ("RUNNING", "Running"),
        (FakeJobState.RUNNING, "Running"),
    ],
)
def test_phase_for_state(state: str, phase: str) -> None:
    assert job_status.phase_for_state(state) == phase


def test_unknown_state_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown job state"):
        job_status.phase_for_state("exploded")


@pytest.mark.parametrize(
    ("value", "maximum", "percent"),
    [
        (None, None, None),
        (0, None, 0),
        (40, None, 40),
        (99.9, None, 99),
        ("40%", None, 40),
        (" 12.5 % ", None, 12),
        (150, None, 100),
        (-3, None, 0),
        (5, 20, 25),
        (20, 20, 100),
        (3, 0, 0),
    ],
)
def test_progress_percent(value: Any, maximum: Any, percent: int | None) -> None:
    assert job_status.progress_percent(value, maximum) == percent


def test_progress_rejects_text() -> None:
    with pytest.raises(ValueError):
        job_status.progress_percent("half")


def test_running_status_has_start_time_progress_and_unknown_condition() -> None:
    status = job_status.job_status(
        "running", now=NOW, job_id="j-1", progress="40%", attempts=1, worker="sdxl-abcde"
    )
    assert status["phase"] == "Running" and status["progress"] == 40 and status["jobId"] == "j-1"
    assert status["startTime"] == NOW_TEXT and "completionTime" not in status
    assert status["worker"] == "sdxl-abcde" and status["attempts"] == 1
    (cond,) = status["conditions"]
    assert (cond["type"], cond["status"], cond["reason"]) == ("Succeeded", "Unknown", "Running")
    GenerationJobStatus.model_validate(status)


def test_success_reports_outputs_full_progress_and_completion() -> None:
    running = job_status.job_status("running", now=NOW, job_id="j-1", progress=70, attempts=1)
    done = job_status.job_status(
        "succeeded",
        now=NOW + 30,
        outputs=[
            {
                "filename": "t_00001_.png",
                "url": "http://api/outputs/j-1/t_00001_.png",
                "contentType": "image/png",
            }
        ],
        previous=running,
        generation=1,
    )
    assert done["phase"] == "Succeeded" and done["progress"] == 100
    assert done["outputs"][0]["contentType"] == "image/png"
    assert done["startTime"] == NOW_TEXT and done["completionTime"] == "2023-11-14T22:13:50Z"
    assert done["jobId"] == "j-1" and done["attempts"] == 1 and done["observedGeneration"] == 1
    (cond,) = done["conditions"]
    assert cond["status"] == "True" and cond["lastTransitionTime"] == "2023-11-14T22:13:50Z"
    assert GenerationJobStatus.model_validate(done).outputs[0].filename == "t_00001_.png"


def test_failure_carries_the_error_into_status_and_condition() -> None:
    status = job_status.job_status(
        "failed", now=NOW, job_id="j-2", error={"code": "NodeError", "message": "CheckpointLoader: not found"}
    )
    assert status["error"] == {"code": "NodeError", "message": "CheckpointLoader: not found"}
    (cond,) = status["conditions"]
    assert (cond["status"], cond["reason"], cond["message"]) == (
        "False",
        "Failed",
        "CheckpointLoader: not found",
    )
    assert status["completionTime"] == NOW_TEXT


def test_error_is_not_reported_while_a_retry_is_queued() -> None:
    status = job_status.job_status("queued", now=NOW, error={"code": "WorkerLost"}, attempts=2)
    assert "error" not in status and status["attempts"] == 2


def test_terminal_phase_is_never_left() -> None:
    cancelled = job_status.job_status("cancelled", now=NOW, job_id="j-3")
    late = job_status.job_status("running", now=NOW + 5, progress=50, previous=cancelled)
    assert late == cancelled


def test_progress_is_kept_when_an_update_has_none() -> None:
    first = job_status.job_status("running", now=NOW, progress=30)
    assert job_status.job_status("running", now=NOW + 1, previous=first)["progress"] == 30


def test_invalid_spec_status_validates() -> None:
    invalid = job_status.invalid_spec_status("spec.workflow: workflow: workflow has no nodes", now=NOW, generation=1)
    assert invalid["phase"] == "Failed" and invalid["error"]["code"] == "validation_error"
    assert invalid["observedGeneration"] == 1
    GenerationJobStatus.model_validate(invalid)


# ---------------------------------------------------------------------------------------------
# Agreement with the job model (comfyfleet.jobs), which API jobs and GenerationJobs share


def test_every_job_state_has_a_phase() -> None:
    assert set(JobState) == set(job_status.STATE_TO_PHASE)
    assert job_status.INVALID_SPEC_CODE == ErrorCode.VALIDATION.value
    for state in JobState:
        assert job_status.is_terminal(job_status.phase_for_state(state)) == state.is_terminal


def test_status_from_a_job_record() -> None:
    job = Job(
        owner="k8s", workflow=GRAPH, state=JobState.RUNNING, progress=Progress(fraction=0.29), attempts=1
    )
    running = job_status.job_status(
        job.state, now=NOW, job_id=job.id, progress=job_status.progress_percent(job.progress.fraction, 1)
    )
    assert running["phase"] == "Running" and running["progress"] == 29
    failed = job.model_copy(
        update={
            "state": JobState.FAILED,
            "error": JobError(code=ErrorCode.TIMEOUT, message="no answer", details={"node": "3"}),
            "outputs": [OutputFile(filename="a.png", node_id="9", key="k/a.png", url="http://x/a.png")],
        }
    )
    status = job_status.job_status(
        failed.state,
        now=NOW + 1,
        error=failed.error.model_dump(mode="json"),
        outputs=[o.model_dump() for o in failed.outputs],
        previous=running,
    )
    assert status["error"] == {"code": "timeout", "message": "no answer"}
    assert status["outputs"] == [{"filename": "a.png", "url": "http://x/a.png", "contentType": "image/png"}]
    GenerationJobStatus.model_validate(status)


# ---------------------------------------------------------------------------------------------
# Job record -> status

WHEN = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def test_output_url() -> None:
    assert job_status.output_url("/api/comfyui/outputs/j/a.png", "") == "/api/comfyui/outputs/j/a.png"
    assert job_status.output_url("/api/comfyui/outputs/j/a.png", "https://gen.example.com/") == (
        "https://gen.example.com/api/comfyui/outputs/j/a.png")
    assert job_status.output_url("https://cdn/x.png", "https://gen.example.com") == "https://cdn/x.png"
    assert job_status.output_url(None, "https://gen.example.com") is None


def job_record(**fields: object) -> Job:
    return Job(owner="k8s:n", workflow=GRAPH, **fields)


def test_status_of_a_succeeded_job() -> None:
    job = job_record(state=JobState.SUCCEEDED, attempts=2, endpoint="k8s:n/pool-a", started_at=WHEN, finished_at=WHEN,
                     outputs=[OutputFile(filename="x_0001.png", node_id="2", key="j/x_0001.png",
                                         url="/api/comfyui/outputs/j/x_0001.png")])
    status = job_status.status_for_job(job, now=WHEN, previous=None, generation=1, public_url="http://api")
    assert status["phase"] == "Succeeded" and status["progress"] == 100 and status["attempts"] == 2
    assert status["jobId"] == job.id and status["worker"] == "k8s:n/pool-a"
    assert status["outputs"] == [{"filename": "x_0001.png", "url": "http://api/api/comfyui/outputs/j/x_0001.png",
                                  "contentType": "image/png"}]
    assert status["startTime"] == status["completionTime"] == "2024-05-01T12:00:00Z"


def test_status_of_a_running_and_a_failed_job() -> None:
    running = job_record(state=JobState.RUNNING, progress=Progress(fraction=0.42))
    assert job_status.status_for_job(running, now=WHEN, previous=None, generation=None)["progress"] == 42
    failed = job_record(state=JobState.FAILED, error=JobError(code=ErrorCode.TIMEOUT, message="too slow"))
    status = job_status.status_for_job(failed, now=WHEN, previous=None, generation=None)
    assert status["phase"] == "Failed" and status["error"] == {"code": "timeout", "message": "too slow"}


def test_lost_job_status() -> None:
    status = job_status.lost_job_status("j-1", now=WHEN, previous={"phase": "Running", "jobId": "j-1"}, generation=2)
    assert status["phase"] == "Failed" and status["error"]["code"] == "internal_error"
