"""Pure parts of the Firestore mirror: the record shape, its round trip, the retry backoff."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from comfyfleet.jobs.model import ErrorCode, Job, JobError, JobState, OutputFile
from comfyfleet.store.firestore import BACKOFF_MAX_SECONDS, backoff_seconds, job_from_record, job_record

WORKFLOW = {"3": {"class_type": "KSampler", "inputs": {"seed": 1}},
            "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0]}}}


def finished_job() -> Job:
    return Job(
        owner="uid-1", workflow=WORKFLOW, template="txt2img", params={"seed": 1, "prompt": "fox"}, priority=7,
        state=JobState.FAILED, attempts=2,
        error=JobError(code=ErrorCode.VALIDATION, message="bad graph",
                       details={"node_errors": [{"node_id": "3", "errors": [[1, 2], {"x": [3]}]}]}),
        outputs=[OutputFile(filename="a.png", node_id="9", size=10, key="generations/uid-1/j/a.png",
                            url="https://x/a.png")],
        created_at=datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=UTC),
        finished_at=datetime(2025, 1, 2, 3, 5, 0, tzinfo=UTC),
    )


def nested_arrays(value: Any, in_array: bool = False) -> bool:
    """Firestore refuses an array directly inside an array."""
    if isinstance(value, list):
        return in_array or any(nested_arrays(v, True) for v in value)
    if isinstance(value, dict):
        return any(nested_arrays(v) for v in value.values())
    return False


def test_record_keeps_query_fields_top_level_and_no_graph():
    record = job_record(finished_job())
    assert record["owner"] == "uid-1" and record["state"] == "failed"
    assert record["created_ts"] == finished_job().created_at.timestamp()
    assert record["workflow"]["nodes"] == 2 and record["workflow"]["class_types"] == ["KSampler", "SaveImage"]
    assert "inputs" not in str(record["workflow"]), "the graph itself is not copied"
    assert record["outputs"][0]["url"] == "https://x/a.png"
    assert not nested_arrays(record)


def test_record_round_trips_to_the_same_public_job():
    job = finished_job()
    back = job_from_record(job_record(job))
    assert back.model_dump(exclude={"workflow"}) == job.model_dump(exclude={"workflow"})
    assert back.workflow == {}


def test_backoff_doubles_then_caps():
    delays = [backoff_seconds(n) for n in range(0, 12)]
    assert delays[0] == 0 and delays[1] == 0.5 and delays[2] == 1.0 and delays[3] == 2.0
    assert delays == sorted(delays) and delays[-1] == BACKOFF_MAX_SECONDS
