"""The whole path through the API: REST -> Redis/RQ -> worker -> ComfyUI simulator -> stored output."""

from __future__ import annotations

import base64
import io
import json

import httpx
from PIL import Image

from tests.support.stack import ADMIN, ALICE, BOB, auth


def txt2img(seed: int, steps: int = 4, **params) -> dict:
    return {"template": "txt2img", "params": {"seed": seed, "steps": steps, "prompt": "a red fox", **params}}


def sse_events(stack, job_id: str, token: str = ALICE) -> list[tuple[str | None, dict]]:
    events = []
    with httpx.stream("GET", f"{stack.url}/api/comfyui/job/{job_id}/events", headers=auth(token), timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                events.append((event, json.loads(line[6:])))
    return events


def test_happy_path_with_progress_events_in_order(sim_factory, stack_factory):
    sim = sim_factory(step_seconds=0.1)
    stack = stack_factory([sim.url], workers=1)
    stack.wait_workers_ready(1)
    r = stack.generate(txt2img(seed=11, steps=10))
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["state"] == "queued" and r.headers["location"] == f"/api/comfyui/job/{job['jobId']}"

    events = sse_events(stack, job["jobId"])
    states = [e[1]["state"] for e in events]
    order = ["queued", "dispatched", "running", "succeeded"]
    assert states[-1] == "succeeded"
    assert [order.index(s) for s in states] == sorted(order.index(s) for s in states), states
    steps = [e[1]["progress"]["value"] for e in events if e[0] == "progress" and e[1]["progress"]["node"] == "3"]
    assert steps and steps == sorted(steps) and max(steps) == 10, steps
    percents = [e[1]["progress"]["percent"] for e in events]
    assert percents == sorted(percents) and percents[-1] == 100

    final = stack.job(job["jobId"])
    assert final["attempts"] == 1 and final["worker"] and final["error"] is None
    [output] = final["outputs"]
    assert output["contentType"] == "image/png" and output["size"] > 0
    png = stack.http.get(output["url"], headers=auth())
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    Image.open(io.BytesIO(png.content)).verify()
    assert stack.http.get(output["url"], headers=auth(BOB)).status_code == 404, "outputs are private"


def test_invalid_workflow_is_a_422_listing_the_failing_nodes(sim_factory, stack_factory):
    sim = sim_factory()
    stack = stack_factory([sim.url], workers=1)
    stack.wait_workers_ready(1)
    workflow = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 0, "height": 64, "batch_size": 1, "color": 0}},
        "2": {"class_type": "ImageInvert", "inputs": {}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
        "4": {"class_type": "NoSuchNode", "inputs": {}},
    }
    r = stack.generate({"workflow": workflow})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_workflow"
    failing = {(n["node_id"], n.get("input_name")) for n in err["details"]["nodeErrors"]}
    assert {("1", "width"), ("2", "image"), ("4", None)} <= failing
    assert "node 2 (ImageInvert) input image" in err["message"]
    assert stack.http.get("/api/queue/stats", headers=auth()).json()["created"] == 0, "nothing was queued"


def test_bad_requests_get_clear_errors(sim_factory, stack_factory):
    sim = sim_factory()
    stack = stack_factory([sim.url], workers=0)
    cases = [
        ({"template": "txt2img", "priority": 11}, "priority"),
        ({"template": "txt2img", "params": {"steps": 0}}, "params.steps"),
        ({"template": "txt2img", "params": {"colour": 1}}, "params.colour"),
        ({"template": "nope"}, "template"),
        ({"template": "weightless", "params": {"prompt": "x"}}, "params.prompt"),
        ({}, "body"),
        ({"template": "txt2img", "workflow": {}}, "body"),
        ({"template": "txt2img", "inputImages": {"a.png": "!!notbase64"}}, "inputImages.a.png"),
    ]
    for body, field in cases:
        r = stack.generate(body)
        assert r.status_code == 422, (body, r.text)
        err = r.json()["error"]
        fields = [d["field"] for d in err["details"]] if isinstance(err["details"], list) else [err["details"]["field"]]
        assert field in fields, (body, err)
        assert set(r.json()) == {"error"} and {"code", "message", "details"} <= set(err)
    json_header = {**auth(), "content-type": "application/json"}
    r = stack.http.post("/api/comfyui/generate", content=b"{not json", headers=json_header)
    assert r.status_code == 422
    big = {"template": "txt2img", "params": {"prompt": "x" * 20}, "inputImages": {"a.png": "A" * (17 * 1024 * 1024)}}
    r = stack.generate(big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


def test_auth_is_required_and_admin_routes_are_guarded(sim_factory, stack_factory):
    sim = sim_factory()
    stack = stack_factory([sim.url], workers=0)
    assert stack.http.post("/api/comfyui/generate", json=txt2img(1)).status_code == 401
    r = stack.generate(txt2img(1), token="wrong-token-wrong-token")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    r = stack.http.get("/api/queue/stats", headers={"Authorization": "Basic abc"})
    assert r.status_code == 401
    assert stack.http.post("/api/queue/clean", headers=auth(ALICE)).status_code == 403
    assert stack.http.post("/api/queue/clean", headers=auth(ADMIN)).status_code == 200
    job_id = stack.generate(txt2img(2)).json()["jobId"]
    assert stack.http.get(f"/api/comfyui/job/{job_id}", headers=auth(BOB)).status_code == 404
    assert stack.http.get(f"/api/comfyui/job/{job_id}", headers=auth(ADMIN)).status_code == 200
    assert stack.http.get("/health").status_code == 200, "liveness needs no token"


def test_idempotency_key_returns_the_same_job(sim_factory, stack_factory):
    sim = sim_factory()
    stack = stack_factory([sim.url], workers=0)
    first = stack.generate(txt2img(3), headers={"Idempotency-Key": "order-42"})
    again = stack.generate(txt2img(4), headers={"Idempotency-Key": "order-42"})
    assert first.status_code == 202 and again.status_code == 200
    assert first.json()["jobId"] == again.json()["jobId"]
    other_user = stack.generate(txt2img(3), token=BOB, headers={"Idempotency-Key": "order-42"})
    assert other_user.json()["jobId"] != first.json()["jobId"]
    in_body = stack.generate({**txt2img(5), "idempotencyKey": "order-42"})
    assert in_body.json()["jobId"] == first.json()["jobId"]
    assert stack.http.get("/api/queue/stats", headers=auth()).json()["waiting"] == 2


def test_sync_endpoint_success_and_504(sim_factory, stack_factory):
    sim = sim_factory(step_seconds=0.2)
    stack = stack_factory([sim.url], workers=1)
    stack.wait_workers_ready(1)
    r = stack.http.post("/api/comfyui/generate/sync", json=txt2img(5, steps=2), headers=auth(), timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "succeeded" and len(r.json()["outputs"]) == 1

    r = stack.http.post("/api/comfyui/generate/sync?timeout=1", json=txt2img(6, steps=30), headers=auth())
    assert r.status_code == 504, r.text
    err = r.json()["error"]
    assert err["code"] == "timeout" and err["details"]["jobId"]
    done = stack.wait_state(err["details"]["jobId"], timeout=60)
    assert done["state"] == "succeeded", "the job keeps running after the 504"


def test_img2img_uploads_the_input_image(sim_factory, stack_factory, tmp_path):
    sim = sim_factory()
    stack = stack_factory([sim.url], workers=1)
    stack.wait_workers_ready(1)
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 200, 30)).save(buf, "PNG")
    workflow = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "input.png"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inv"}},
    }
    body = {"workflow": workflow, "inputImages": {"input.png": base64.b64encode(buf.getvalue()).decode()}}
    r = stack.generate(body)
    assert r.status_code == 202, r.text
    done = stack.wait_state(r.json()["jobId"])
    assert done["state"] == "succeeded", done["error"]
    png = stack.http.get(done["outputs"][0]["url"], headers=auth()).content
    img = Image.open(io.BytesIO(png)).convert("RGB")
    assert img.size == (64, 48) and img.getpixel((5, 5)) == (245, 55, 225), "the pod really inverted our image"


def test_fleet_routes_stats_and_metrics(sim_factory, stack_factory):
    sim = sim_factory(loras="detail_tweaker_xl.safetensors")
    stack = stack_factory([sim.url], workers=1)
    workers = stack.wait_workers_ready(1)["workers"]
    assert workers[0]["url"] is None and workers[0]["state"] == "ready", "addresses are for admins"
    admin_view = stack.http.get("/api/comfyui/workers", headers=auth(ADMIN)).json()["workers"]
    assert admin_view[0]["url"] == sim.url
    assert "sd_xl_base_1.0.safetensors" in workers[0]["checkpoints"]
    r = stack.http.post("/api/comfyui/verify-lora", headers=auth(),
                        json={"loras": ["detail_tweaker_xl.safetensors", "missing.safetensors"]})
    assert r.status_code == 200
    body = r.json()
    assert [x["available"] for x in body["results"]] == [True, False] and body["allAvailable"] is False
    assert body["results"][0]["workers"] == [workers[0]["id"]]
    job_id = stack.generate(txt2img(7)).json()["jobId"]
    stack.wait_state(job_id, "succeeded")
    stats = stack.http.get("/api/queue/stats", headers=auth()).json()
    assert stats["completed"] == 1 and stats["waiting"] == 0
    assert set(stats["byPriority"]) == {str(p) for p in range(1, 11)}
    detailed = stack.http.get("/health/detailed").json()
    assert detailed["status"] == "ok" and detailed["redis"] == "ok" and detailed["workers"]["ready"] == 1
    metrics = stack.http.get("/metrics").text
    assert 'comfyfleet_jobs_finished_total{state="succeeded"} 1.0' in metrics
    assert 'comfyfleet_endpoints{pool="default",state="ready"} 1.0' in metrics
    assert "comfyfleet_http_requests_total" in metrics
    history = stack.http.get("/api/comfyui/jobs", headers=auth()).json()["jobs"]
    assert [j["jobId"] for j in history] == [job_id]
    assert stack.http.get("/api/comfyui/jobs", headers=auth(BOB)).json()["jobs"] == []
    assert stack.http.get("/docs").status_code == 200
    assert "/api/comfyui/generate" in stack.http.get("/openapi.json").text


def test_workers_are_added_and_removed_at_run_time(sim_factory, stack_factory):
    first = sim_factory()
    stack = stack_factory([first.url], workers=1)
    stack.wait_workers_ready(1)
    second = sim_factory()
    assert stack.http.post("/api/comfyui/workers", json={"url": second.url}, headers=auth(ALICE)).status_code == 403
    r = stack.http.post("/api/comfyui/workers", json={"url": "ftp://x"}, headers=auth(ADMIN))
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "url"
    r = stack.http.post("/api/comfyui/workers", json={"url": second.url}, headers=auth(ADMIN))
    assert r.status_code == 201 and r.json()["state"] == "unhealthy", "not trusted before its first probe"
    added = r.json()["id"]
    stack.wait_workers_ready(2)
    r = stack.http.delete(f"/api/comfyui/workers/url:{first.url}", headers=auth(ADMIN))
    assert r.status_code == 204
    workers = stack.http.get("/api/comfyui/workers", headers=auth()).json()["workers"]
    assert [w["id"] for w in workers] == [added]
    job = stack.wait_state(stack.generate(txt2img(seed=21)).json()["jobId"])
    assert job["state"] == "succeeded" and job["worker"] == added, "only the added worker is left"
    assert stack.http.delete("/api/comfyui/workers/url:http://nowhere:1", headers=auth(ADMIN)).status_code == 404
