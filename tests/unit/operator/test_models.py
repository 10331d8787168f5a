"""Model helpers: parsing bodies, RFC 3339 times and condition bookkeeping."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from comfyfleet.operator import models


def test_worker_spec_from_body_applies_model_defaults() -> None:
    spec = models.ComfyUIWorkerSpec.from_body({"metadata": {"name": "w"}, "spec": {"image": "img"}})
    assert spec.replicas == 1 and spec.port == 8188
    assert spec.gpu.count == 1 and spec.gpu.resource_name == "nvidia.com/gpu"
    assert spec.autoscaling.enabled is False and spec.probe.interval_seconds == 10


def test_models_accept_python_names_and_dump_camel_case() -> None:
    spec = models.ComfyUIWorkerSpec(image="img", image_pull_policy="Always", extra_args=["--cpu"])
    dumped = spec.to_k8s()
    assert dumped["imagePullPolicy"] == "Always" and dumped["extraArgs"] == ["--cpu"]
    assert "nodeSelector" not in dumped, "unset optional fields are left out"


def test_job_spec_from_body_without_spec_is_invalid() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        models.GenerationJobSpec.from_body({"metadata": {"name": "j"}})


def test_status_from_body_tolerates_missing_status_and_unknown_fields() -> None:
    assert models.GenerationJobStatus.from_body({}).phase is None
    status = models.ComfyUIWorkerStatus.from_body({"status": {"replicas": 2, "kopf": {"progress": {}}}})
    assert status.replicas == 2


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (0.0, "1970-01-01T00:00:00Z"),
        (1_700_000_000.9, "2023-11-14T22:13:20Z"),
        (datetime(2024, 5, 1, 12, 0, 0), "2024-05-01T12:00:00Z"),
        (datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC), "2024-05-01T12:00:00Z"),
    ],
)
def test_rfc3339(moment: datetime | float, text: str) -> None:
    assert models.rfc3339(moment) == text


def test_set_condition_moves_transition_time_only_on_status_change() -> None:
    first = models.set_condition(None, "Ready", "False", "Starting", "0/1", 100.0)
    same = models.set_condition(first, "Ready", "False", "Starting", "still 0/1", 200.0)
    assert same[0]["lastTransitionTime"] == first[0]["lastTransitionTime"]
    assert same[0]["message"] == "still 0/1"
    flipped = models.set_condition(same, "Ready", "True", "AllReady", "1/1", 300.0, observed_generation=4)
    assert flipped[0]["lastTransitionTime"] == models.rfc3339(300.0)
    assert flipped[0]["observedGeneration"] == 4


def test_set_condition_keeps_other_conditions_and_does_not_mutate() -> None:
    first = models.set_condition(None, "A", "True", "R", "m", 1.0)
    both = models.set_condition(first, "B", "False", "R", "m", 2.0)
    assert [c["type"] for c in both] == ["A", "B"] and len(first) == 1
