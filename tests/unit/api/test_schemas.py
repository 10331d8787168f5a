"""The API's job view: public_json (the front door's answer, written without the model) must be the bytes
JobPublic.of(...).model_dump_json(by_alias=True) writes, for every kind of job."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from comfyfleet.api.schemas import JobPublic, public_json
from comfyfleet.api.tokens import JobTokens
from comfyfleet.jobs.model import (
    ErrorCode,
    Job,
    JobError,
    JobState,
    OutputFile,
    Progress,
    WebhookDelivery,
    WebhookSpec,
)
from comfyfleet.store.jobrepo import decode_job, encode_fields

T0 = datetime(2026, 12, 2, 5, 0, tzinfo=UTC)
T1 = datetime(2026, 12, 2, 5, 0, 1, 250_000, tzinfo=UTC)
WF = {"1": {"class_type": "SaveImage", "inputs": {}}}

JOBS = {
    "queued": Job(owner="alice", workflow=WF),
    "running": Job(owner="bob", workflow=WF, state=JobState.RUNNING, endpoint="pool-a/pod-1", attempts=1,
                   progress=Progress(value=3, max=10, node="3", fraction=0.37), started_at=T1, dispatched_at=T0,
                   traceparent="00-" + "ab" * 16 + "-" + "cd" * 8 + "-01", pool="pool-a", template="txt2img",
                   queue_timeout_seconds=30),
    "succeeded": Job(owner="carol", workflow=WF, state=JobState.SUCCEEDED, finished_at=T1, gpu_seconds=1 / 3,
                     progress=Progress(value=7, max=0, fraction=1.0),
                     outputs=[OutputFile(filename="a.png", node_id="9", key="k/a.png", url="/api/comfyui/o/a.png",
                                         size=12),
                              OutputFile(filename="b é.webp", node_id="9", key="k/b", url="https://s3/b?sig=1",
                                         content_type="image/webp", data="AAAA"),
                              OutputFile(filename="c.png", node_id="10", key="k/c", url="/o/c?x=1")],
                     webhook=WebhookSpec(url="https://example.com/hook"),
                     webhook_deliveries=[WebhookDelivery(id="msg_1", event="job.succeeded", attempts=2,
                                                         last_status=500, last_error="boom\u2028\x1f",
                                                         last_attempt_at=T1, next_attempt_at=T0),
                                         WebhookDelivery(id="msg_2", event="job.started", state="delivered")]),
    "failed": Job(owner="dave ünïcode", workflow=WF, state=JobState.FAILED, gpu_seconds=1e16,
                  error=JobError(code=ErrorCode.INTERNAL, message="m \"quoted\" \\ /",
                                 details={"node": "4", "n": [1, 2.5, True, None], "nested": {"x": 1e-7}}),
                  cancel_requested=True),
    "details beyond 64 bits": Job(owner="erin", workflow=WF, state=JobState.FAILED,
                                  error=JobError(code=ErrorCode.INTERNAL, message="m", details={"big": 2**70})),
    "other time zone": Job(owner="frank", workflow=WF,
                           created_at=datetime(2026, 1, 1, 1, 2, 3, 4000, tzinfo=timezone(timedelta(hours=2)))),
}


def stored_and_read(job: Job) -> Job:
    """The job as a reader gets it back from its record (pydantic's own time zone objects on datetimes)."""
    return decode_job(job.id, encode_fields(job))


@pytest.mark.parametrize("name", sorted(JOBS))
@pytest.mark.parametrize("tokens", [None, JobTokens(b"secret", 3600)], ids=["no-token", "token"])
@pytest.mark.parametrize("read_back", [False, True], ids=["in-memory", "from-record"])
def test_the_front_doors_bytes_are_the_models(name, tokens, read_back, monkeypatch):
    job = stored_and_read(JOBS[name]) if read_back else JOBS[name]
    monkeypatch.setattr("comfyfleet.api.schemas.time.time", lambda: 1_796_190_000.5)  # one token for both
    model = JobPublic.of(job, tokens)
    assert public_json(job, tokens) == model.model_dump_json(by_alias=True).encode()
    if tokens is not None:
        assert model.access_token and model.access_token_expires_at is not None
        assert [o.url and "token=" in o.url for o in model.outputs] == [
            bool(o.url and o.url.startswith("/")) for o in job.outputs]


def test_the_view_names_every_field_of_the_model():
    written = json.loads(public_json(JOBS["succeeded"], JobTokens(b"s", 60)))
    assert list(written) == [f.alias for f in JobPublic.model_fields.values()]
