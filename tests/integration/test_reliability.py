"""Issue 9 at the API's edge, over real HTTP and real Redis: bad input and abuse get a clear 4xx, never a 500;
fair-use limits answer 429 with Retry-After; jobs that cannot start end with a clear error; usage is counted."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.procs import ManagedProcess, free_port, wait_for
from tests.support.redis import RedisServer
from tests.support.stack import ADMIN, BOB, auth, wait_until

PNG = base64.b64encode((Path(__file__).resolve().parents[2] / "examples" / "input.png").read_bytes()).decode()
# Accepted while no endpoint has reported a catalog (only the graph's shape is checked), never runs.
PARKED = {"workflow": {"1": {"class_type": "SaveImage", "inputs": {}}}}


def txt2img(seed: int, steps: int = 2, **params) -> dict:
    return {"template": "txt2img", "params": {"seed": seed, "steps": steps, "prompt": "a fox", **params}}


def error_of(r: httpx.Response) -> dict:
    body = r.json()
    assert set(body) == {"error"}, body
    return body["error"]


def test_redis_down_is_503_with_retry_after_on_every_route(tmp_path, stack_factory):
    redis_server = RedisServer(tmp_path / "own-redis")
    try:
        stack = stack_factory([], workers=0, env={"COMFYFLEET_REDIS_URL": redis_server.url,
                                                  "COMFYFLEET_UNAVAILABLE_RETRY_AFTER_SECONDS": "7"})
        job_id = stack.generate(PARKED).json()["jobId"]
    finally:
        redis_server.stop()
    calls = [("POST", "/api/comfyui/generate", PARKED), ("GET", f"/api/comfyui/job/{job_id}", None),
             ("DELETE", f"/api/comfyui/job/{job_id}", None), ("GET", "/api/comfyui/jobs", None),
             ("GET", "/api/comfyui/workers", None), ("GET", "/api/queue/stats", None),
             ("GET", "/api/comfyui/usage", None), ("POST", "/api/comfyui/verify-lora", {"loras": ["a"]}),
             ("GET", "/health/detailed", None)]
    for method, path, body in calls:
        r = stack.http.request(method, path, json=body, headers=auth(ADMIN))
        assert r.status_code == 503, (method, path, r.status_code, r.text)
        assert r.headers["retry-after"] == "7", (method, path)
        assert "127.0.0.1" not in r.text, "no Redis address in an answer"
    assert stack.http.get("/health").status_code == 200, "liveness needs no Redis"


def test_deep_nesting_is_refused_at_the_door_naming_the_field(stack_factory):
    stack = stack_factory([], workers=0)
    deep: object = "x"
    for _ in range(250):
        deep = {"a": deep}
    wf = {"1": {"class_type": "SaveImage", "inputs": {}, "_meta": {"title": deep}}}
    r = stack.generate({"workflow": wf})
    assert r.status_code == 422, r.text
    err = error_of(r)
    assert err["code"] == "workflow_too_large" and err["details"][0]["field"].startswith("workflow.1._meta.title")
    lists = json.loads("[" * 60 + "]" * 60)
    r = stack.generate({"workflow": {"1": {"class_type": "SaveImage", "inputs": {"x": lists}}}})
    assert r.status_code == 422 and error_of(r)["details"][0]["field"].startswith("workflow.1.inputs.x")
    r = stack.generate({"workflow": {"1": {"class_type": "SaveImage", "inputs": {}, "_meta": {"t": [1]}}}})
    assert r.status_code == 422 and error_of(r)["details"]["nodeErrors"][0]["input_name"] == "_meta.t"
    assert stack.http.get("/api/comfyui/jobs", headers=auth()).status_code == 200
    assert stack.http.get("/api/queue/stats", headers=auth()).json()["created"] == 0


def test_numbers_json_cannot_carry_are_refused_naming_the_field(stack_factory):
    """NaN, Infinity (json.loads reads them, JSON has none) and integers beyond 64 bits: a 422 naming where,
    never a record that stores something else."""
    stack = stack_factory([], workers=0)
    for bad in ("NaN", "-Infinity", str(2**64), str(-(2**63) - 1)):
        body = '{"workflow": {"1": {"class_type": "SaveImage", "inputs": {"x": [1, BAD]}}}}'.replace("BAD", bad)
        r = stack.http.post("/api/comfyui/generate", content=body,
                            headers={**auth(), "content-type": "application/json"})
        assert r.status_code == 422, (bad, r.text)
        err = error_of(r)
        assert err["code"] == "invalid_workflow" and err["details"][0]["field"] == "workflow.1.inputs.x.1", (bad, err)
    assert stack.http.get("/api/queue/stats", headers=auth()).json()["created"] == 0


def test_malformed_input_is_a_4xx_and_the_connection_stays_usable(stack_factory):
    stack = stack_factory([], workers=0)
    cases = [
        ({"workflow": {"1": "not a node"}, "params": {"seed": 1}}, "workflow"),
        ({"workflow": {"1": {"class_type": "KSampler", "inputs": []}}, "params": {"seed": 1}}, "workflow"),
        ({**PARKED, "inputImages": {"a\x00.png": PNG}}, "inputImages"),
        ({**PARKED, "inputImages": {"x" * 300 + ".png": PNG}}, "inputImages"),
    ]
    for body, field in cases:
        r = stack.generate(body)
        assert r.status_code == 422, (body, r.text)
        err = error_of(r)
        fields = [d["field"] for d in err["details"]] if isinstance(err["details"], list) else [err["details"]["field"]]
        assert fields[0].startswith(field), (fields, body)
    r = stack.http.get("/api/comfyui/jobs", params={"before": "nan"}, headers=auth())
    assert r.status_code == 422 and error_of(r)["details"][0]["field"] == "before"
    job_id = stack.generate(PARKED).json()["jobId"]
    for name in (".", "%2e%2e", "%5c", "..%5c..%5cx", "%00"):
        r = stack.http.get(f"/api/comfyui/outputs/{job_id}/{name}", headers=auth())
        assert r.status_code == 404, (name, r.status_code, r.text)
    assert stack.http.get("/health").status_code == 200


def test_chunked_body_over_the_limit_is_413(stack_factory):
    stack = stack_factory([], workers=0, env={"COMFYFLEET_MAX_BODY_BYTES": "4096"})

    def chunks():
        yield b'{"workflow": {"1": {"class_type": "SaveImage", "inputs": {"t": "'
        for _ in range(10):
            yield b"x" * 1024
        yield b'"}}}}'

    r = stack.http.post("/api/comfyui/generate", content=chunks(),
                        headers={**auth(), "Content-Type": "application/json"})
    assert "content-length" not in {k.lower() for k in r.request.headers}, "sent chunked"
    assert r.status_code == 413, r.text
    assert error_of(r)["code"] == "payload_too_large"


def test_unknown_pool_is_refused_and_a_job_that_cannot_start_times_out(stack_factory):
    stack = stack_factory([], workers=0, env={"COMFYFLEET_QUEUE_SWEEP_INTERVAL_SECONDS": "0.3"})
    r = stack.generate({**PARKED, "pool": "ghost"})
    assert r.status_code == 422 and error_of(r)["details"][0]["field"] == "pool", r.text
    dead = f"http://127.0.0.1:{free_port()}"
    assert stack.http.post("/api/comfyui/workers", json={"url": dead, "pool": "cold"},
                           headers=auth(ADMIN)).status_code == 201
    r = stack.generate({**PARKED, "pool": "cold", "queueTimeoutSeconds": 5})
    assert r.status_code == 202, r.text
    assert r.json()["queueTimeoutSeconds"] == 5
    job = stack.wait_state(r.json()["jobId"], "failed", timeout=30)
    assert job["error"]["code"] == "queue_timeout" and "5 s" in job["error"]["message"]
    assert job["attempts"] == 0 and job["startedAt"] is None
    assert stack.http.get("/api/queue/stats", headers=auth()).json()["waiting"] == 0, "it left the queue"
    default = stack.generate({**PARKED, "pool": "cold"}).json()
    assert default["queueTimeoutSeconds"] == 3600, "the server default applies"


def test_jobs_in_flight_per_user(stack_factory):
    stack = stack_factory([], workers=0, env={"COMFYFLEET_MAX_JOBS_IN_FLIGHT_PER_USER": "2"})
    first = [stack.generate(PARKED).json()["jobId"] for _ in range(2)]
    r = stack.generate(PARKED)
    assert r.status_code == 429, r.text
    err = error_of(r)
    assert err["details"]["limit"] == "max_jobs_in_flight_per_user" and "max_jobs_in_flight_per_user" in err["message"]
    assert int(r.headers["retry-after"]) >= 1
    assert stack.generate(PARKED, token=BOB).status_code == 202, "one user's backlog does not block another"
    assert stack.generate({**PARKED, "idempotencyKey": "k1"}).status_code == 429
    assert stack.http.delete(f"/api/comfyui/job/{first[0]}", headers=auth()).status_code == 200
    again = stack.generate({**PARKED, "idempotencyKey": "k1"})
    assert again.status_code == 202, "a finished job frees its slot"
    repeat = stack.generate({**PARKED, "idempotencyKey": "k1"})
    assert repeat.status_code == 200 and repeat.json()["jobId"] == again.json()["jobId"], "a repeat is no new job"


def test_submissions_per_minute_and_queue_depth(stack_factory):
    stack = stack_factory([], workers=0, env={"COMFYFLEET_MAX_SUBMISSIONS_PER_MINUTE_PER_USER": "3",
                                              "COMFYFLEET_MAX_QUEUE_DEPTH": "5"})
    assert [stack.generate(PARKED).status_code for _ in range(3)] == [202] * 3
    r = stack.generate(PARKED)
    assert r.status_code == 429 and error_of(r)["details"]["limit"] == "max_submissions_per_minute_per_user"
    assert 1 <= int(r.headers["retry-after"]) <= 60
    assert [stack.generate(PARKED, token=BOB).status_code for _ in range(2)] == [202, 202]
    r = stack.generate(PARKED, token=ADMIN)
    assert r.status_code == 429 and error_of(r)["details"]["limit"] == "max_queue_depth", r.text
    assert stack.http.get("/api/queue/stats", headers=auth()).json()["waiting"] == 5


def test_queue_depth_per_pool(stack_factory):
    stack = stack_factory([], workers=0, env={"COMFYFLEET_MAX_QUEUE_DEPTH_PER_POOL": "2"})
    for pool in ("a", "b"):
        stack.http.post("/api/comfyui/workers", json={"url": f"http://127.0.0.1:{free_port()}", "pool": pool},
                        headers=auth(ADMIN))
    assert [stack.generate({**PARKED, "pool": "a"}).status_code for _ in range(2)] == [202, 202]
    r = stack.generate({**PARKED, "pool": "a"}, token=BOB)
    assert r.status_code == 429 and error_of(r)["details"]["limit"] == "max_queue_depth_per_pool"
    assert "pool a" in error_of(r)["message"]
    assert stack.generate({**PARKED, "pool": "b"}).status_code == 202, "another pool has room"


def test_usage_progress_and_downloads_of_a_finished_job(sim_factory, stack_factory):
    sim = sim_factory(step_seconds=0.05)
    stack = stack_factory([sim.url], workers=1)
    stack.wait_workers_ready(1)
    r = stack.generate(txt2img(5, steps=6, filename_prefix="日本語"))
    assert r.status_code == 202, r.text
    job = stack.wait_state(r.json()["jobId"])
    assert job["state"] == "succeeded", job["error"]
    assert job["gpuSeconds"] > 0
    p = job["progress"]
    assert p["percent"] == 100 and p["value"] == p["max"] > 0 and p["node"] is None
    [output] = job["outputs"]
    download = stack.http.get(output["url"], headers=auth())
    assert download.status_code == 200 and download.content.startswith(b"\x89PNG")
    assert "filename*=UTF-8''%E6%97%A5%E6%9C%AC%E8%AA%9E" in download.headers["content-disposition"]

    usage = stack.http.get("/api/comfyui/usage", headers=auth()).json()
    assert usage["user"] == "alice" and len(usage["days"]) == 7
    assert usage["days"][-1]["gpuSeconds"] == pytest.approx(job["gpuSeconds"], abs=0.002)
    assert usage["days"][-1]["attempts"] == 1 and usage["totalGpuSeconds"] == usage["days"][-1]["gpuSeconds"]
    assert stack.http.get("/api/comfyui/usage", params={"user": "alice"}, headers=auth(BOB)).status_code == 403
    assert stack.http.get("/api/comfyui/usage", headers=auth(BOB)).json()["totalGpuSeconds"] == 0
    other = stack.http.get("/api/comfyui/usage", params={"user": "alice", "days": 1}, headers=auth(ADMIN)).json()
    assert other["totalGpuSeconds"] == usage["totalGpuSeconds"]
    assert 'comfyfleet_gpu_seconds_total{pool="default"}' in stack.http.get("/metrics").text

    for path in (stack.tmp / "data" / "outputs").rglob("*.png"):
        path.unlink()
    gone = stack.http.get(output["url"], headers=auth())
    assert gone.status_code == 404 and str(stack.tmp) not in gone.text and "/outputs/" not in error_of(gone)["message"]


def test_catalogs_of_all_pods_are_merged_and_file_names_are_advisory(sim_factory, stack_factory):
    a = sim_factory(loras="detail_tweaker_xl.safetensors")
    b = sim_factory(loras="pixel_art_xl.safetensors")
    stack = stack_factory([a.url, b.url], workers=1)
    stack.wait_workers_ready(2)
    for lora in ("detail_tweaker_xl.safetensors", "pixel_art_xl.safetensors"):
        r = stack.generate(txt2img(3, lora=lora))
        assert r.status_code == 202, r.text
        assert stack.wait_state(r.json()["jobId"])["state"] == "succeeded"
    r = stack.generate(txt2img(3, lora="sub/not_listed.safetensors"))
    assert r.status_code == 202, "a file name no catalog lists (yet) is the pod's to judge"
    failed = stack.wait_state(r.json()["jobId"])
    assert failed["state"] == "failed" and "sub/not_listed.safetensors" in failed["error"]["message"]
    r = stack.generate(txt2img(3, steps=0))
    assert r.status_code == 422, "non-file values are still checked at the door"


def test_fleet_details_are_for_admins_and_endpoint_urls_are_checked(sim_factory, stack_factory):
    sim = sim_factory()
    stack = stack_factory([sim.url], workers=0)
    dead = f"http://127.0.0.1:{free_port()}"
    stack.http.post("/api/comfyui/workers", json={"url": dead}, headers=auth(ADMIN))
    wait_until(lambda: all(w["lastError"] for w in stack.http.get(
        "/api/comfyui/workers", headers=auth(ADMIN)).json()["workers"] if w["url"] == dead), what="probe error")
    user = stack.http.get("/api/comfyui/workers", headers=auth()).json()["workers"]
    assert {w["url"] for w in user} == {None} and all(w["info"] == {} for w in user)
    assert all(w["lastError"] in (None, "unreachable or failing its health probe") for w in user)
    admin = stack.http.get("/api/comfyui/workers", headers=auth(ADMIN)).json()["workers"]
    assert {w["url"] for w in admin} == {sim.url, dead}
    for url in ("http://169.254.169.254", "http://2130706433:8188", "http://0x7f000001:8188",
                "http://[fe80::1]:8188", "http://metadata.google.internal", "http://u:p@gpu:8188"):
        r = stack.http.post("/api/comfyui/workers", json={"url": url}, headers=auth(ADMIN))
        assert r.status_code == 422 and error_of(r)["details"][0]["field"] == "url", (url, r.text)


def test_queue_clean_uses_finish_time_and_deletes_files(sim_factory, stack_factory):
    sim = sim_factory()
    stack = stack_factory([sim.url], workers=1)
    stack.wait_workers_ready(1)
    done = stack.wait_state(stack.generate(txt2img(9)).json()["jobId"])
    failed = stack.wait_state(stack.generate(txt2img(9, lora="nowhere.safetensors")).json()["jobId"])
    assert (done["state"], failed["state"]) == ("succeeded", "failed")
    folder = stack.tmp / "data" / "outputs" / "alice" / done["jobId"]
    assert folder.exists()
    clean = stack.http.post("/api/queue/clean", json={"olderThanSeconds": 3600}, headers=auth(ADMIN))
    assert clean.json()["removed"] == 0, "recently finished jobs (failed ones too) are kept"
    assert stack.http.get(f"/api/comfyui/job/{failed['jobId']}", headers=auth()).status_code == 200
    assert stack.http.post("/api/queue/clean", json={"olderThanSeconds": 0}, headers=auth(ADMIN)).json()["removed"] == 2
    assert not folder.exists(), "the outputs of forgotten jobs are deleted"
    assert stack.http.get(f"/api/comfyui/job/{done['jobId']}", headers=auth()).status_code == 404


def test_ops_routes_behind_auth_when_configured(stack_factory):
    stack = stack_factory([], workers=0, env={"COMFYFLEET_PROTECT_OPS_ROUTES": "true"})
    assert stack.http.get("/metrics").status_code == 401
    assert stack.http.get("/health/detailed").status_code == 401
    assert stack.http.get("/metrics", headers=auth()).status_code == 200
    assert stack.http.get("/health").status_code == 200, "liveness stays open for probes"


def test_openapi_declares_the_bearer_scheme_and_error_answers(stack_factory):
    stack = stack_factory([], workers=0)
    schema = stack.http.get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert any(s.get("scheme", "").lower() == "bearer" for s in schemes.values())
    generate = schema["paths"]["/api/comfyui/generate"]["post"]
    assert generate["security"] and {"401", "422", "429", "503"} <= set(generate["responses"])
    assert {"401", "404"} <= set(schema["paths"]["/api/comfyui/job/{job_id}"]["get"]["responses"])


def _non_loopback_address() -> str | None:
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=5).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return next((a for a in out if "." in a and not a.startswith("127.")), None)


def test_auth_none_serves_only_loopback_connections(tmp_path, redis_server):
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect through")
    port = free_port("0.0.0.0")
    code = ("import uvicorn; from comfyfleet.api.app import create_app; from comfyfleet.settings import ApiSettings;"
            f"uvicorn.run(create_app(ApiSettings(auth_mode='none', redis_url={redis_server.url!r}, "
            f"redis_prefix='none{port}', run_health_monitor=False)), host='0.0.0.0', port={port})")
    proc = ManagedProcess([sys.executable, "-c", code], log_path=tmp_path / "api.log")
    try:
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200, timeout=30)
        try:
            with socket.create_connection((address, port), timeout=2):
                pass
        except OSError:
            pytest.skip(f"{address} is not reachable from this machine")
        assert httpx.get(f"http://127.0.0.1:{port}/api/comfyui/jobs", timeout=5).status_code == 200
        r = httpx.get(f"http://{address}:{port}/api/comfyui/jobs", timeout=5)
        assert r.status_code == 403 and "loopback" in r.json()["error"]["message"]
    finally:
        proc.stop()


def test_redis_out_of_memory_is_503_not_500(tmp_path, stack_factory):
    import redis

    redis_server = RedisServer(tmp_path / "full-redis")
    try:
        stack = stack_factory([], workers=0, env={"COMFYFLEET_REDIS_URL": redis_server.url})
        conn = redis.Redis.from_url(redis_server.url)
        conn.config_set("maxmemory-policy", "noeviction")  # as the chart runs it
        conn.config_set("maxmemory", "1")  # full: every write that needs memory is refused with OOM
        r = stack.generate(PARKED)
        assert r.status_code == 503 and r.headers["retry-after"], r.text
        assert error_of(r)["code"] == "unavailable"
        conn.config_set("maxmemory", "0")
        assert stack.generate(PARKED).status_code == 202, "accepted again once Redis has room"
    finally:
        redis_server.stop()


async def test_an_endpoint_removed_while_being_added_is_a_409(redis_server, tmp_path):
    """The race (another admin deletes the endpoint between the write and the read-back) cannot be timed over
    HTTP, so the registry's upsert is wrapped to lose it every time; Redis and the app are real."""
    from comfyfleet.api.app import create_app
    from comfyfleet.settings import ApiSettings
    from tests.support.stack import TOKENS

    app = create_app(ApiSettings(redis_url=redis_server.url, redis_prefix=f"race{free_port()}", api_tokens=TOKENS,
                                 run_health_monitor=False, data_dir=tmp_path))
    registry = app.state.cf.dispatcher.registry
    upsert = registry.upsert

    def upsert_then_lose(endpoint_id: str, *args, **kwargs) -> None:
        upsert(endpoint_id, *args, **kwargs)
        registry.remove(endpoint_id)

    registry.upsert = upsert_then_lose
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        r = await client.post("/api/comfyui/workers", json={"url": "http://gpu-box:8188"}, headers=auth(ADMIN))
    assert r.status_code == 409 and error_of(r)["details"]["field"] == "url", r.text
