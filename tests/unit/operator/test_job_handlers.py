"""The GenerationJob handlers' pure parts: the status timer's `when` filter."""

from __future__ import annotations

from typing import Any

import pytest

from comfyfleet.operator.job_handlers import job_not_final
from comfyfleet.operator.models import CREATE_RECORDED_ANNOTATION

RECORDED = {CREATE_RECORDED_ANNOTATION: "{}"}


@pytest.mark.parametrize(
    ("status", "annotations", "runs"),
    [
        ({}, {}, False),  # create has not run (or not finished): its own status write comes first
        ({}, RECORDED, True),  # the operator died between kopf's metadata and status PATCHes of create
        ({"phase": "Pending"}, RECORDED, True),
        ({"jobId": "j1", "phase": "Succeeded"}, RECORDED, False),
        ({"jobId": "j1", "phase": "Queued"}, {}, True),
        ({"jobId": "j1", "phase": "Dispatched"}, {}, True),
        ({"jobId": "j1", "phase": "Running"}, {}, True),
        ({"jobId": "j1", "phase": "Succeeded"}, {}, False),
        ({"jobId": "j1", "phase": "Failed"}, {}, False),
        ({"jobId": "j1", "phase": "Cancelled"}, {}, False),
        ({"phase": "Failed", "error": {"code": "validation_error"}}, RECORDED, False),  # invalid spec: never queued
    ],
)
def test_status_timer_runs_once_queued_until_the_phase_is_final(status: dict[str, Any], annotations: dict[str, str],
                                                                runs: bool) -> None:
    assert job_not_final(status=status, annotations=annotations) is runs
