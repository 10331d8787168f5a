"""GenerationJob status from job states, progress normalisation, and spec validation."""

from __future__ import annotations

import dataclasses
from enum import StrEnum
from typing import Any

import pytest

from comfyfleet.operator import jobstatus
from comfyfleet.operator.jobstatus import InvalidJobSpec
from comfyfleet.operator.models import GenerationJobSpec, GenerationJobStatus

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
    assert jobstatus.phase_for_state(state) == phase


def test_unknown_state_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown job state"):
        jobstatus.phase_for_state("exploded")


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
    assert jobstatus.progress_percent(value, maximum) == percent


def test_progress_rejects_text() -> None:
    with pytest.raises(ValueError):
        jobstatus.progress_percent("half")


def test_running_status_has_start_time_progress_and_unknown_condition() -> None:
    status = jobstatus.job_status(
        "running", now=NOW, job_id="j-1", progress="40%", attempts=1, worker="sdxl-abcde"
    )
    assert status["phase"] == "Running" and status["progress"] == 40 and status["jobId"] == "j-1"
    assert status["startTime"] == NOW_TEXT and "completionTime" not in status
    assert status["worker"] == "sdxl-abcde" and status["attempts"] == 1
    (cond,) = status["conditions"]
    assert (cond["type"], cond["status"], cond["reason"]) == ("Succeeded", "Unknown", "Running")
    GenerationJobStatus.model_validate(status)


def test_success_reports_outputs_full_progress_and_completion() -> None:
    running = jobstatus.job_status("running", now=NOW, job_id="j-1", progress=70, attempts=1)
    done = jobstatus.job_status(
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
    status = jobstatus.job_status(
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
    status = jobstatus.job_status("queued", now=NOW, error={"code": "WorkerLost"}, attempts=2)
    assert "error" not in status and status["attempts"] == 2


def test_terminal_phase_is_never_left() -> None:
    cancelled = jobstatus.job_status("cancelled", now=NOW, job_id="j-3")
    late = jobstatus.job_status("running", now=NOW + 5, progress=50, previous=cancelled)
    assert late == cancelled


def test_progress_is_kept_when_an_update_has_none() -> None:
    first = jobstatus.job_status("running", now=NOW, progress=30)
    assert jobstatus.job_status("running", now=NOW + 1, previous=first)["progress"] == 30


def test_pending_and_invalid_spec_statuses_validate() -> None:
    pending = jobstatus.pending_status(now=NOW, generation=1)
    assert pending["phase"] == "Pending" and pending["progress"] == 0
    invalid = jobstatus.invalid_spec_status("spec.workflow is empty", now=NOW)
    assert invalid["phase"] == "Failed" and invalid["error"]["code"] == "validation_error"
    for status in (pending, invalid):
        GenerationJobStatus.model_validate(status)


def test_params_of_a_template_job_are_snake_case_and_only_those_set() -> None:
    spec = GenerationJobSpec.model_validate(
        {"template": "txt2img", "params": {"prompt": "a cat", "negativePrompt": "dog", "loraStrength": 0.5}}
    )
    workflow, template, params = jobstatus.generation_job_params(spec)
    assert workflow is None and template == "txt2img"
    assert params == {"prompt": "a cat", "negative_prompt": "dog", "lora_strength": 0.5}


def test_template_without_params_gives_empty_params() -> None:
    assert jobstatus.generation_job_params({"template": "txt2img"}) == (None, "txt2img", {})


def test_workflow_job_returns_the_graph_and_its_params() -> None:
    workflow, template, params = jobstatus.generation_job_params({"workflow": GRAPH, "priority": 3})
    assert workflow == GRAPH and template is None and params == {}
    _, _, params = jobstatus.generation_job_params({"workflow": GRAPH, "params": {"filenamePrefix": "x/y"}})
    assert params == {"filename_prefix": "x/y"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"workflow": GRAPH, "template": "txt2img"}, "exactly one"),
        ({}, "exactly one"),
        ({"template": "txt2img", "priority": 0}, "priority"),
        ({"workflow": {}}, "empty"),
        ({"workflow": {"1": {"inputs": {}}}}, "class_type"),
        ({"workflow": {"1": "EmptyImage"}}, "must be an object"),
        ({"workflow": {"1": {"class_type": "X", "inputs": [1]}}}, "inputs"),
    ],
)
def test_invalid_specs_raise_invalid_job_spec(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidJobSpec, match=message):
        jobstatus.generation_job_params(spec)


# ---------------------------------------------------------------------------------------------
# Agreement with the job model (comfyfleet.jobs), which API jobs and GenerationJobs share


def test_every_job_state_has_a_phase() -> None:
    from comfyfleet.jobs.model import JobState

    assert {state.value for state in JobState} == set(jobstatus.STATE_TO_PHASE)
    for state in JobState:
        assert jobstatus.is_terminal(jobstatus.phase_for_state(state)) == state.is_terminal


def test_params_feed_the_job_models_generate_params() -> None:
    from comfyfleet.jobs.model import ErrorCode
    from comfyfleet.jobs.params import GenerateParams

    assert jobstatus.INVALID_SPEC_CODE == ErrorCode.VALIDATION.value
    spec = {
        "template": "txt2img",
        "params": {
            "prompt": "p",
            "negativePrompt": "n",
            "seed": 1,
            "steps": 20,
            "cfg": 7,
            "width": 512,
            "height": 768,
            "batchSize": 2,
            "samplerName": "euler",
            "scheduler": "karras",
            "denoise": 0.5,
            "checkpoint": "c.safetensors",
            "lora": "l.safetensors",
            "loraStrength": 0.8,
            "filenamePrefix": "out/x",
        },
    }
    _, _, params = jobstatus.generation_job_params(spec)
    assert GenerateParams(**params).given() == params


def limits(metadata: list[Any]) -> list[tuple[str, Any]]:
    """Comparable form of pydantic field constraints (Ge(0) equals Ge(0.0))."""
    return [
        (type(m).__name__, dataclasses.astuple(m) if dataclasses.is_dataclass(m) else vars(m))
        for m in metadata
    ]


def test_params_limits_match_the_job_models() -> None:
    from comfyfleet.jobs.params import GenerateParams
    from comfyfleet.operator.models import GenerationParams

    ours = GenerationParams.model_fields
    theirs = GenerateParams.model_fields
    # `image` names an uploaded input file, which only the HTTP API can provide.
    assert set(ours) == set(theirs) - {"image"}
    for name, field in ours.items():
        assert limits(field.metadata) == limits(theirs[name].metadata), name


def test_status_from_a_job_record() -> None:
    from comfyfleet.jobs.model import ErrorCode, Job, JobError, JobState, OutputFile, Progress

    job = Job(
        owner="k8s", workflow=GRAPH, state=JobState.RUNNING, progress=Progress(fraction=0.29), attempts=1
    )
    running = jobstatus.job_status(
        job.state, now=NOW, job_id=job.id, progress=jobstatus.progress_percent(job.progress.fraction, 1)
    )
    assert running["phase"] == "Running" and running["progress"] == 29
    failed = job.model_copy(
        update={
            "state": JobState.FAILED,
            "error": JobError(code=ErrorCode.TIMEOUT, message="no answer", details={"node": "3"}),
            "outputs": [OutputFile(filename="a.png", node_id="9", key="k/a.png", url="http://x/a.png")],
        }
    )
    status = jobstatus.job_status(
        failed.state,
        now=NOW + 1,
        error=failed.error.model_dump(mode="json"),
        outputs=[o.model_dump() for o in failed.outputs],
        previous=running,
    )
    assert status["error"] == {"code": "timeout", "message": "no answer"}
    assert status["outputs"] == [{"filename": "a.png", "url": "http://x/a.png", "contentType": "image/png"}]
    GenerationJobStatus.model_validate(status)
