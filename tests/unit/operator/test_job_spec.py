"""GenerationJob spec -> Job, as the API builds it."""

from __future__ import annotations

from typing import Any

import pytest

from comfyfleet.jobs.params import GenerateParams
from comfyfleet.operator import job_spec
from comfyfleet.operator.job_spec import InvalidJobSpec
from comfyfleet.operator.models import GenerationJobSpec, GenerationParams

DEFAULTS = job_spec.JobDefaults(max_attempts=3, timeout_seconds=300)
WORKFLOW = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 512, "height": 512, "batch_size": 1, "color": 0}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
}


def spec(**fields: object) -> GenerationJobSpec:
    return GenerationJobSpec.model_validate(fields)


def test_template_job_is_built_like_an_api_job() -> None:
    job = job_spec.build_job(
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
    job = job_spec.build_job(spec(workflow=WORKFLOW, params={"width": 256}), uid="u", namespace="n",
                            defaults=DEFAULTS)
    assert job.timeout_seconds == 300 and job.pool is None
    assert job.workflow["1"]["inputs"]["width"] == 256


def test_workflow_without_params_is_kept_as_is() -> None:
    job = job_spec.build_job(spec(workflow=WORKFLOW), uid="u", namespace="n", defaults=DEFAULTS)
    assert job.workflow == WORKFLOW


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"template": "no-such"}, "no-such"),
        ({"workflow": {}}, "workflow has no nodes"),
        ({"workflow": {"1": {"inputs": {}}}}, "node 1: node is missing the class_type"),
        ({"workflow": {"1": "EmptyImage"}}, "must be an object"),
        ({"workflow": {"1": {"class_type": "X", "inputs": [1]}}}, "inputs must be an object"),
        ({"workflow": {"1": {"class_type": "X", "inputs": {"a": ["9", 0]}}}}, "not in the workflow"),
        ({"workflow": WORKFLOW, "params": {"lora": "x.safetensors"}}, "params.lora"),
    ],
)
def test_invalid_specs(fields: dict[str, Any], needle: str) -> None:
    with pytest.raises(InvalidJobSpec, match=needle):
        job_spec.build_job(spec(**fields), uid="u", namespace="n", defaults=DEFAULTS)


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"workflow": WORKFLOW, "template": "txt2img"}, "exactly one"),
        ({}, "exactly one"),
        ({"template": "txt2img", "priority": 0}, "spec.priority"),
        ({"template": "txt2img", "params": {"width": 63}}, "spec.params.width"),
    ],
)
def test_specs_the_schema_rules_out(fields: dict[str, Any], needle: str) -> None:
    with pytest.raises(InvalidJobSpec, match=needle):
        job_spec.parse_spec({"spec": fields})


def test_params_are_snake_case_and_only_those_set() -> None:
    template = spec(template="txt2img", params={"prompt": "a cat", "negativePrompt": "dog", "loraStrength": 0.5})
    assert job_spec.spec_params(template) == {"prompt": "a cat", "negative_prompt": "dog", "lora_strength": 0.5}
    assert job_spec.spec_params(spec(template="txt2img")) == {}
    assert job_spec.spec_params(spec(workflow=WORKFLOW, params={"filenamePrefix": "x/y"})) == {"filename_prefix": "x/y"}


def test_every_param_reaches_the_job_models_generate_params() -> None:
    camel = {
        "prompt": "p", "negativePrompt": "n", "seed": 1, "steps": 20, "cfg": 7, "width": 512, "height": 768,
        "batchSize": 2, "samplerName": "euler", "scheduler": "karras", "denoise": 0.5, "checkpoint": "c.safetensors",
        "lora": "l.safetensors", "loraStrength": 0.8, "filenamePrefix": "out/x",
    }  # fmt: skip
    params = job_spec.spec_params(spec(template="txt2img", params=camel))
    assert len(params) == len(camel)
    assert GenerateParams(**params).given() == params


def test_spec_params_are_the_job_models_params_but_image() -> None:
    # `image` names an uploaded input file, which only the HTTP API can provide.
    assert set(GenerationParams.model_fields) == set(GenerateParams.model_fields) - {"image"}
    for name, field in GenerationParams.model_fields.items():
        theirs = GenerateParams.model_fields[name]
        assert (field.annotation, field.metadata, field.default) == (theirs.annotation, theirs.metadata, theirs.default)


def test_parse_spec_reports_the_first_problem() -> None:
    with pytest.raises(InvalidJobSpec, match="exactly one of spec.workflow or spec.template"):
        job_spec.parse_spec({"spec": {"priority": 3}})
    assert job_spec.parse_spec({"spec": {"template": "txt2img"}}).template == "txt2img"
