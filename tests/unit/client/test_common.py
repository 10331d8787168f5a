"""Client pieces without a server: SSE parsing, request bodies, the token's origin, and the CLI's safe paths."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from comfyfleet.client._common import SameOriginBearer, SseParser, generate_body, job_events
from comfyfleet.submit import SubmitError, output_path, safe_filename, safe_job_id

JOB = {"jobId": "j1", "owner": "alice", "state": "running", "priority": 5, "pool": None, "template": None,
       "progress": {"value": 1, "max": 4, "node": "3", "percent": 25}, "attempts": 1, "maxAttempts": 3,
       "error": None, "outputs": [], "worker": "w", "source": "api", "cancelRequested": False,
       "createdAt": "2026-12-01T00:00:00Z", "updatedAt": "2026-12-01T00:00:00Z", "startedAt": None,
       "finishedAt": None}


def test_sse_events_become_jobs_and_other_data_is_skipped() -> None:
    lines = [": keepalive", "", "event: progress", "id: 5-0", f"data: {json.dumps(JOB)}", "",
             "event: ping", "data: {}", "", "data: not json", ""]
    events = list(job_events(lines, SseParser()))
    assert [(e.event, e.id, e.job.progress.percent) for e in events] == [("progress", "5-0", 25)]


def test_generate_body() -> None:
    body = generate_body(template="txt2img", params={"seed": 1}, webhook="https://h.example/x",
                         output={"format": "webp"}, priority=7)
    assert body == {"template": "txt2img", "params": {"seed": 1}, "priority": 7,
                    "webhook": {"url": "https://h.example/x"}, "output": {"format": "webp"}}
    with pytest.raises(ValueError, match="exactly one"):
        generate_body({"1": {}}, template="txt2img")


@pytest.mark.parametrize(("url", "sent"), [
    ("https://api.example/api/comfyui/job/1", True),
    ("https://api.example:443/x", True),
    ("https://API.example/x", True),
    ("http://api.example/x", False),  # another scheme is another origin
    ("https://api.example:8443/x", False),
    ("https://bucket.s3.amazonaws.com/generations/a/1/x.png?X-Amz-Signature=...", False),
    ("https://api.example.evil.test/x", False),
])
def test_the_token_goes_only_to_the_api_origin(url: str, sent: bool) -> None:
    auth = SameOriginBearer("https://api.example", "tok")
    request = next(auth.auth_flow(httpx.Request("GET", url)))
    assert ("Authorization" in request.headers) == sent


@pytest.mark.parametrize(("name", "safe"), [
    ("ComfyUI_00001_.png", "ComfyUI_00001_.png"),
    ("../../../etc/passwd", "passwd"),
    ("..\\..\\win.ini", "win.ini"),
    ("/abs/path.png", "path.png"),
    ("..", None),
    ("", None),
    (".bashrc", "bashrc"),
    ("a\x00b\n.png", "a_b_.png"),
])
def test_safe_filename(name: str, safe: str | None) -> None:
    if safe is None:
        with pytest.raises(SubmitError):
            safe_filename(name)
    else:
        assert safe_filename(name) == safe


@pytest.mark.parametrize("job_id", ["../../x", "a/b", "", ".", "x" * 65, "id with space"])
def test_unusable_job_ids(job_id: str) -> None:
    with pytest.raises(SubmitError, match="job id"):
        safe_job_id(job_id)


def test_outputs_stay_inside_out_and_never_overwrite_each_other(tmp_path: Path) -> None:
    taken: set[Path] = set()
    first = output_path(tmp_path / "out", "5b1c-2", "../../x.png", taken)
    taken.add(first)
    second = output_path(tmp_path / "out", "5b1c-2", "sub/x.png", taken)
    assert first == (tmp_path / "out" / "5b1c-2" / "x.png").resolve()
    assert second == (tmp_path / "out" / "5b1c-2" / "x-2.png").resolve()
