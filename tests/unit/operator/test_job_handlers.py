"""The GenerationJob handlers' pure parts: the status timer's `when` filter."""

from __future__ import annotations

from typing import Any

import pytest

from comfyfleet.operator.job_handlers import job_not_final


@pytest.mark.parametrize(
    ("status", "runs"),
    [
        ({}, True),  # not handled yet, or the operator died between kopf's metadata and status PATCHes
        ({"phase": "Pending"}, True),
        ({"jobId": "j1", "phase": "Queued"}, True),
        ({"jobId": "j1", "phase": "Dispatched"}, True),
        ({"jobId": "j1", "phase": "Running"}, True),
        ({"jobId": "j1", "phase": "Succeeded"}, False),
        ({"jobId": "j1", "phase": "Failed"}, False),
        ({"jobId": "j1", "phase": "Cancelled"}, False),
        ({"phase": "Failed", "error": {"code": "validation_error"}}, False),  # invalid spec: never queued
    ],
)
def test_status_timer_runs_until_the_phase_is_final(status: dict[str, Any], runs: bool) -> None:
    assert job_not_final(status=status) is runs
