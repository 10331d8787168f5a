"""examples/job.json is a job exactly as the API answers (every field, no unknown one)."""

from __future__ import annotations

import json

from comfyfleet.api.schemas import JobPublic
from tests.support.procs import REPO_ROOT


def test_the_example_job_is_a_valid_api_answer_with_every_field():
    data = json.loads((REPO_ROOT / "examples" / "job.json").read_text())
    job = JobPublic.model_validate(data)
    assert set(data) == {f.alias or name for name, f in JobPublic.model_fields.items()}
    assert job.access_token and job.outputs[0].url and job.access_token in job.outputs[0].url
