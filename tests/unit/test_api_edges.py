"""Pure helpers at the API edge: endpoint URL policy, image names, downloads, worker views, progress."""

import pytest
import redis
from starlette.requests import Request

from comfyfleet.api.deps import served_on_loopback
from comfyfleet.api.errors import redis_unavailable
from comfyfleet.api.routes.fleet import redact_url, worker_view
from comfyfleet.api.routes.generate import image_name_problem
from comfyfleet.api.routes.jobs import content_disposition
from comfyfleet.api.schemas import progress_of
from comfyfleet.api.urlpolicy import endpoint_url_problem
from comfyfleet.dispatch.registry import Endpoint
from comfyfleet.jobs.model import Job, JobState, Progress


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data", "http://[fe80::1]:8188", "http://metadata.google.internal",
    "http://2130706433:8188", "http://0x7f000001:8188", "http://0177.0.0.1:8188", "http://127.1:8188",
    "http://[::ffff:169.254.169.254]", "http://0.0.0.0:8188", "http://[fd00:ec2::254]", "http://user:pw@gpu:8188",
    "http://224.0.0.1", "ftp://gpu:8188", "http://gpu:8188/?x=1",
])
def test_refused_endpoint_urls(url):
    assert endpoint_url_problem(url) is not None


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8188", "http://gpu-box:8188", "http://10.0.0.5:8188", "https://comfy.example.com/base",
    "http://db1:8188", "http://[::1]:8188", "http://comfyui-0.comfyui.ns.svc:8188",
])
def test_allowed_endpoint_urls(url):
    assert endpoint_url_problem(url) is None


@pytest.mark.parametrize(("name", "ok"), [("a.png", True), ("a\x00.png", False), ("x" * 300, False),
                                          ("../a.png", False), ("a\\b.png", False), (".hidden", False),
                                          ("日本語.png", True), ("a\nb.png", False)])
def test_image_names(name, ok):
    assert (image_name_problem(name) is None) is ok


def test_content_disposition_survives_any_name():
    header = content_disposition('日本語"_00001_.png')
    header.encode("latin-1")  # what Starlette does with headers: must not raise
    assert "filename*=UTF-8''%E6%97%A5%E6%9C%AC%E8%AA%9E%22_00001_.png" in header
    assert 'filename="_____00001_.png"' in header


def test_redact_url_drops_credentials():
    assert redact_url("http://u:secret@gpu:8188/x") == "http://gpu:8188/x"
    assert redact_url("http://gpu:8188") == "http://gpu:8188"


def test_users_see_no_addresses_or_error_bodies():
    e = Endpoint(id="url:http://u:pw@gpu:8188", url="http://u:pw@gpu:8188", healthy=False,
                 last_error="HTTP 500: <html>internal secret page</html>", info={"device": "H100"})
    user = worker_view(e, "job-of-someone-else", admin=False)
    assert user.url is None and user.current_job is None and user.info == {}
    assert "secret" not in (user.last_error or "") and "pw" not in user.id
    admin = worker_view(e, "j", admin=True)
    assert admin.url == "http://gpu:8188" and admin.last_error == e.last_error and admin.current_job == "j"


def test_finished_job_reads_complete():
    done = Job(owner="a", workflow={}, state=JobState.SUCCEEDED, progress=Progress(value=0, max=0, fraction=1.0))
    p = progress_of(done)
    assert (p.value, p.max, p.percent, p.node) == (1, 1, 100, None)
    running = Job(owner="a", workflow={}, state=JobState.RUNNING, progress=Progress(value=3, max=10, fraction=0.5))
    assert progress_of(running).model_dump() == {"value": 3, "max": 10, "node": None, "percent": 50}


@pytest.mark.parametrize(("server", "local"), [(("127.0.0.1", 8000), True), (("::1", 8000), True),
                                               (("10.1.2.3", 8000), False), (("0.0.0.0", 8000), False),
                                               (None, False)])
def test_auth_none_only_on_loopback_sockets(server, local):
    request = Request({"type": "http", "method": "GET", "path": "/", "headers": [], "server": server})
    assert served_on_loopback(request) is local


@pytest.mark.parametrize(("exc", "unavailable"), [
    (redis.ConnectionError("Error 111 connecting"), True),
    (redis.TimeoutError("timeout"), True),
    (redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'"), True),
    (redis.ResponseError("Command # 1 (SET x) of pipeline caused error: OOM command not allowed when used "
                         "memory > 'maxmemory'."), True),
    (redis.ResponseError("LOADING Redis is loading the dataset in memory"), True),
    (redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), False),
])
def test_which_redis_errors_mean_come_back_later(exc, unavailable):
    assert redis_unavailable(exc) is unavailable
