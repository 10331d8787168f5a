"""Log lines: JSON or text, the job's fields from the context, nothing secret, levels per component."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest
from pydantic import ValidationError

from comfyfleet.jobs.model import Job
from comfyfleet.observability.logs import bind_job, job_fields, log_context, setup_logging
from comfyfleet.settings import CommonSettings

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    names = ("comfyfleet.dispatch", "comfyfleet.comfy", "rq", "comfyfleet.api", "uvicorn")
    levels = {n: logging.getLogger(n).level for n in names}
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    for n, lv in levels.items():
        logging.getLogger(n).setLevel(lv)


def capture(settings: CommonSettings, component: str = "dispatch") -> io.StringIO:
    stream = io.StringIO()
    setup_logging(component, settings, stream=stream)
    return stream


def lines(stream: io.StringIO) -> list[str]:
    return [line for line in stream.getvalue().splitlines() if line]


def test_json_lines_carry_the_job_fields_of_their_task(restore_logging):
    stream = capture(CommonSettings(log_format="json"))
    job = Job(owner="alice", workflow={"1": {"class_type": "SaveImage", "inputs": {}}}, pool="sdxl", attempts=2,
              traceparent=TRACEPARENT)
    log = logging.getLogger("comfyfleet.dispatch.runner")

    async def one_job() -> None:
        bind_job(job, endpoint="url:http://pod-a:8188")
        await asyncio.sleep(0)
        log.info("job %s started", job.id)

    async def main() -> None:
        await asyncio.gather(one_job(), asyncio.sleep(0))
        log.info("between jobs")  # the job's fields stayed with its task

    asyncio.run(main())
    first, second = (json.loads(line) for line in lines(stream))
    assert first["msg"] == f"job {job.id} started"
    assert {k: first[k] for k in ("job_id", "pool", "endpoint", "attempt", "user", "trace_id")} == {
        "job_id": job.id, "pool": "sdxl", "endpoint": "url:http://pod-a:8188", "attempt": 2, "user": "alice",
        "trace_id": "0af7651916cd43dd8448eb211c80319c"}
    assert (first["level"], first["component"], first["logger"]) == ("info", "dispatch", "comfyfleet.dispatch.runner")
    assert "workflow" not in first and "SaveImage" not in json.dumps(first)
    assert "job_id" not in second


def test_extra_fields_and_a_scoped_context(restore_logging):
    stream = capture(CommonSettings(log_format="json"))
    log = logging.getLogger("comfyfleet.dispatch.scheduler")
    with log_context(pool="sdxl"):
        log.warning("claimed", extra=job_fields(endpoint="k8s:ns/pod-1", job_id="j1", ignored="x"))
    log.warning("after")
    first, second = (json.loads(line) for line in lines(stream))
    assert (first["pool"], first["endpoint"], first["job_id"]) == ("sdxl", "k8s:ns/pod-1", "j1")
    assert "ignored" not in first and "pool" not in second


def test_tokens_never_reach_a_line(restore_logging):
    stream = capture(CommonSettings(log_format="json"))
    log = logging.getLogger("comfyfleet.api.auth")
    log.error("refused Authorization: Bearer abc.def-ghi_123 from %s", "10.0.0.1")
    log.error('settings {"token": "s3cr3t-value-0123456789", "owner": "alice"}')
    try:
        raise ValueError("Bearer zzz-in-a-traceback")
    except ValueError:
        log.exception("failed")
    text = "\n".join(lines(stream))
    for secret in ("abc.def-ghi_123", "s3cr3t-value-0123456789", "zzz-in-a-traceback"):
        assert secret not in text
    assert "alice" in text and "[redacted]" in text


def test_a_huge_message_is_cut(restore_logging):
    stream = capture(CommonSettings(log_format="json"))
    logging.getLogger("comfyfleet.dispatch").warning("graph %s", "x" * 100_000)
    [line] = lines(stream)
    assert len(line) < 5000 and "characters cut" in line


def test_text_is_the_default_and_shows_the_fields(restore_logging):
    stream = capture(CommonSettings())
    with log_context(job_id="j1", attempt=1):
        logging.getLogger("comfyfleet.dispatch").warning("retrying")
    [line] = lines(stream)
    assert not line.startswith("{")
    assert line.endswith("WARNING comfyfleet.dispatch: retrying [job_id=j1 attempt=1]")


def test_levels_per_component(restore_logging):
    stream = capture(CommonSettings(log_level="WARNING", log_levels="dispatch=DEBUG,api=ERROR"))
    logging.getLogger("comfyfleet.dispatch.runner").debug("dispatch detail")
    logging.getLogger("comfyfleet.comfy.client").debug("client detail")
    logging.getLogger("comfyfleet.api.routes").warning("api warning")
    logging.getLogger("comfyfleet.operator").info("operator info")
    text = stream.getvalue()
    assert "dispatch detail" in text and "client detail" in text
    assert "api warning" not in text and "operator info" not in text


@pytest.mark.parametrize(("value", "field"), [
    ("dispatch=LOUD", "log_levels"), ("dispatcher=DEBUG", "log_levels"), ("dispatch", "log_levels"),
])
def test_bad_levels_are_refused_naming_the_setting(value, field):
    with pytest.raises(ValidationError) as err:
        CommonSettings(log_levels=value)
    assert field in str(err.value)


def test_unknown_log_level_is_refused():
    with pytest.raises(ValidationError, match="log_level"):
        CommonSettings(log_level="CHATTY")
