"""What `comfyfleet status` and `comfyfleet jobs` print for given API bodies."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from comfyfleet.observability.console import Style, duration, job_times, render_jobs, render_status

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
PLAIN, COLOUR = Style(colour=False), Style(colour=True)


def worker(id_: str, pool: str, state: str, job: str | None = None, error: str | None = None) -> dict:
    return {"id": id_, "pool": pool, "state": state, "currentJob": job, "lastError": error}


QUEUE = {"waiting": 3, "active": 1, "retrying": 0, "completed": 10, "failed": 2, "cancelled": 1,
         "byPriority": {"10": 1, "5": 2, "1": 0}, "byPool": {"sdxl": 2, "any": 1}, "oldestAgeSeconds":
         {"sdxl": 125.0, "any": 3.0}}


def test_status_shows_pools_endpoints_and_queue():
    workers = {"workers": [worker("k8s:ns/sdxl-a", "sdxl", "busy", "0123456789abcdef"),
                           worker("k8s:ns/sdxl-b", "sdxl", "unhealthy", error="connection refused"),
                           worker("k8s:ns/flux-a", "flux", "ready")]}
    text = "\n".join(render_status(workers, QUEUE, PLAIN))
    assert "\x1b[" not in text
    pools = {line.split()[0]: line.split()[1:] for line in text.splitlines()[2:5]}
    assert pools == {"any": ["0", "0", "0", "1", "3.0s"], "flux": ["1", "0", "0", "0", "-"],
                     "sdxl": ["0", "1", "1", "2", "2m05s"]}
    assert "k8s:ns/sdxl-a  sdxl  busy       01234567" in text
    assert "connection refused" in text
    assert "waiting 3 (p10:1  p5:2)  running 1  retrying 0" in text


def test_status_colours_states_only_when_asked():
    workers = {"workers": [worker("a", "p", "unhealthy")]}
    assert "\x1b[31munhealthy\x1b[0m" in "\n".join(render_status(workers, QUEUE, COLOUR))


def test_status_without_endpoints_says_so():
    assert "no ComfyUI endpoint is registered" in render_status({"workers": []}, QUEUE, PLAIN)


@pytest.mark.parametrize(("job", "expected"), [
    ({"state": "queued", "createdAt": "2026-12-01T11:59:00+00:00"}, (60.0, None)),
    ({"state": "running", "createdAt": "2026-12-01T11:59:00+00:00", "dispatchedAt": "2026-12-01T11:59:02+00:00",
      "startedAt": "2026-12-01T11:59:03+00:00"}, (2.0, 57.0)),
    ({"state": "succeeded", "createdAt": "2026-12-01T11:00:00+00:00", "dispatchedAt": "2026-12-01T11:00:01+00:00",
      "startedAt": "2026-12-01T11:00:01+00:00", "finishedAt": "2026-12-01T11:00:31+00:00"}, (1.0, 30.0)),
    # cancelled in the queue: never dispatched, no wait to show
    ({"state": "cancelled", "createdAt": "2026-12-01T11:00:00+00:00", "finishedAt": "2026-12-01T11:00:09+00:00"},
     (None, None)),
])
def test_wait_and_run_time(job, expected):
    assert job_times(job, NOW) == expected


@pytest.mark.parametrize(("seconds", "text"), [(None, "-"), (0.25, "0.2s"), (42, "42s"), (185, "3m05s"),
                                               (7600, "2h06m")])
def test_duration(seconds, text):
    assert duration(seconds) == text


def test_jobs_table():
    body = {"jobs": [{"jobId": "0123456789abcdef", "state": "failed", "progress": {"percent": 40}, "pool": None,
                      "template": "txt2img", "attempts": 3, "error": {"code": "worker_lost"},
                      "createdAt": "2026-12-01T11:58:00+00:00", "dispatchedAt": "2026-12-01T11:58:05+00:00",
                      "startedAt": "2026-12-01T11:58:06+00:00", "finishedAt": "2026-12-01T11:58:16+00:00"}]}
    header, row = render_jobs(body, PLAIN, NOW)
    assert header.split() == ["JOB", "STATE", "PROGRESS", "POOL", "TEMPLATE", "AGE", "WAIT", "RUN", "TRIES", "ERROR"]
    assert row.split() == ["01234567", "failed", "40%", "any", "txt2img", "2m00s", "5.0s", "10s", "3", "worker_lost"]
    assert render_jobs({"jobs": []}, PLAIN, NOW) == ["no jobs"]
