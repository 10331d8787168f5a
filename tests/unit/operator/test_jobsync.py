"""GenerationJob -> Job (as the API builds it) and Job record -> GenerationJob status."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from comfyfleet.jobs.model import ErrorCode, Job, JobError, JobState, OutputFile, Progress
from comfyfleet.operator import jobsync
from comfyfleet.operator.jobstatus import InvalidJobSpec
from comfyfleet.operator.models import GenerationJobSpec

DEFAULTS = jobsync.JobDefaults(max_attempts=3, timeout_seconds=300)
NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
WORKFLOW = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 512, "height": 512, "batch_size": 1, "color": 0}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
}


def spec(**fields: object) -> GenerationJobSpec:
    return GenerationJobSpec.model_validate(fields)


def test_template_job_is_built_like_an_api_job() -> None:
    job = jobsync.build_job(
        spec(template="txt2img", params={"prompt": "a fox", "seed": 7, "steps": 12}, pool="sdxl", priority=8,
             timeoutSeconds=60),
        uid="uid-1", namespace="team-a", defaults=DEFAULTS,
    )
    assert (job.owner, job.source, job.idempotency_key) == ("k8s:team-a", "k8s", "uid-1")
    assert (job.pool, job.priority, job.timeout_seconds, job.max_attempts) == ("sdxl", 8, 60, 3)
    assert job.template == "txt2img" and job.params == {"prompt": "a fox", "seed": 7, "steps": 12}
    sampler = next(n for n in job.workflow.values() if n["class_type"] == "KSampler")
    assert sampler["inputs"]["seed"] == 7 and sampler["inputs"]["steps"] == 12


def test_workflow_job_gets_params_and_the_default_timeout() -> None:
    job = jobsync.build_job(spec(workflow=WORKFLOW, params={"width": 256}), uid="u", namespace="n",
                            defaults=DEFAULTS)
    assert job.timeout_seconds == 300 and job.pool is None
    assert job.workflow["1"]["inputs"]["width"] == 256


def test_workflow_without_params_is_kept_as_is() -> None:
    job = jobsync.build_job(spec(workflow=WORKFLOW), uid="u", namespace="n", defaults=DEFAULTS)
    assert job.workflow == WORKFLOW


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"template": "no-such"}, "no-such"),
        ({"workflow": {"1": {"inputs": {}}}}, "class_type"),
        ({"workflow": WORKFLOW, "params": {"lora": "x.safetensors"}}, "params.lora"),
    ],
)
def test_invalid_specs(fields: dict, needle: str) -> None:
    with pytest.raises(InvalidJobSpec, match=needle):
        jobsync.build_job(spec(**fields), uid="u", namespace="n", defaults=DEFAULTS)


def test_parse_spec_reports_the_first_problem() -> None:
    with pytest.raises(InvalidJobSpec, match="exactly one of spec.workflow or spec.template"):
        jobsync.parse_spec({"spec": {"priority": 3}})
    assert jobsync.parse_spec({"spec": {"template": "txt2img"}}).template == "txt2img"


def test_output_url() -> None:
    assert jobsync.output_url("/api/comfyui/outputs/j/a.png", "") == "/api/comfyui/outputs/j/a.png"
    assert jobsync.output_url("/api/comfyui/outputs/j/a.png", "https://gen.example.com/") == (
        "https://gen.example.com/api/comfyui/outputs/j/a.png")
    assert jobsync.output_url("https://cdn/x.png", "https://gen.example.com") == "https://cdn/x.png"
    assert jobsync.output_url(None, "https://gen.example.com") is None


def record(**fields: object) -> Job:
    return Job(owner="k8s:n", workflow=WORKFLOW, **fields)


def test_status_of_a_succeeded_job() -> None:
    job = record(state=JobState.SUCCEEDED, attempts=2, worker="k8s:n/pool-a", started_at=NOW, finished_at=NOW,
                 outputs=[OutputFile(filename="x_0001.png", node_id="2", key="j/x_0001.png",
                                     url="/api/comfyui/outputs/j/x_0001.png")])
    status = jobsync.status_for_job(job, now=NOW, previous=None, generation=1, public_url="http://api")
    assert status["phase"] == "Succeeded" and status["progress"] == 100 and status["attempts"] == 2
    assert status["jobId"] == job.id and status["worker"] == "k8s:n/pool-a"
    assert status["outputs"] == [{"filename": "x_0001.png", "url": "http://api/api/comfyui/outputs/j/x_0001.png",
                                  "contentType": "image/png"}]
    assert status["startTime"] == status["completionTime"] == "2024-05-01T12:00:00Z"


def test_status_of_a_running_and_a_failed_job() -> None:
    running = record(state=JobState.RUNNING, progress=Progress(fraction=0.42))
    assert jobsync.status_for_job(running, now=NOW, previous=None, generation=None)["progress"] == 42
    failed = record(state=JobState.FAILED, error=JobError(code=ErrorCode.TIMEOUT, message="too slow"))
    status = jobsync.status_for_job(failed, now=NOW, previous=None, generation=None)
    assert status["phase"] == "Failed" and status["error"] == {"code": "timeout", "message": "too slow"}


def test_lost_job_status() -> None:
    status = jobsync.lost_job_status("j-1", now=NOW, previous={"phase": "Running", "jobId": "j-1"}, generation=2)
    assert status["phase"] == "Failed" and status["error"]["code"] == "internal_error"
