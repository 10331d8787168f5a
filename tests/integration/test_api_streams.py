"""Job streams as browsers use them: event ids and resume on any replica, the WebSocket, access tokens,
one shared subscription per process, the per-user stream cap, the stream lifetime, and CORS."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import redis
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.support.procs import ManagedProcess, free_port, python_module, wait_for
from tests.support.stack import ADMIN, ALICE, BOB, auth


def txt2img(seed: int, steps: int = 4) -> dict:
    return {"template": "txt2img", "params": {"seed": seed, "steps": steps, "prompt": "a red fox"}}


def read_sse(response: httpx.Response, stop_after=None) -> list[dict]:
    """Parse SSE frames into {"id", "event", "data"}; stop_after(events) -> True stops reading early."""
    events: list[dict] = []
    frame: dict = {}
    for line in response.iter_lines():
        if line.startswith("id: "):
            frame["id"] = line[4:]
        elif line.startswith("event: "):
            frame["event"] = line[7:]
        elif line.startswith("data: "):
            frame["data"] = json.loads(line[6:])
        elif line == "" and frame:
            events.append(frame)
            frame = {}
            if stop_after and stop_after(events):
                break
    return events


def sse(url: str, job_id: str, headers: dict | None = None, params: dict | None = None, stop_after=None,
        ) -> list[dict]:
    with httpx.stream("GET", f"{url}/api/comfyui/job/{job_id}/events", headers=headers or {}, params=params,
                      timeout=60) as r:
        assert r.status_code == 200, r.read()
        return read_sse(r, stop_after)


def ws_events(url: str, params: str, headers: dict | None = None) -> tuple[list[dict], int | None, str]:
    """Every frame of a WebSocket until the server closes it, with the close code and reason."""
    frames = []
    with connect(url.replace("http", "ws", 1) + "/api/comfyui/ws?" + params, additional_headers=headers,
                 open_timeout=10) as ws:
        try:
            while True:
                frames.append(json.loads(ws.recv(timeout=60)))
        except ConnectionClosed as closed:
            rcvd = closed.rcvd
            return frames, rcvd.code if rcvd else None, rcvd.reason if rcvd else ""


@contextmanager
def replica(stack, tmp_path) -> Iterator[str]:
    """A second API process on the same Redis and key prefix."""
    port = free_port()
    proc = ManagedProcess(python_module("comfyfleet", "api"), env={**stack.env, "COMFYFLEET_PORT": str(port)},
                          log_path=tmp_path / "api-replica.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(url + "/health").status_code == 200, timeout=30, what="replica /health")
        yield url
    finally:
        proc.stop()


def test_sse_resumes_on_another_replica_without_losing_events_and_ws_sends_the_same(sim_factory, stack_factory,
                                                                                    tmp_path):
    sim = sim_factory(step_seconds=0.1)
    stack = stack_factory([sim.url], workers=1)
    stack.wait_workers_ready(1)
    job = stack.generate(txt2img(seed=1, steps=20)).json()
    with replica(stack, tmp_path) as other:
        first = sse(stack.url, job["jobId"], auth(), stop_after=lambda ev: ev[-1]["data"]["progress"]["value"] >= 5)
        assert first[0]["event"] == "state" and all(e.get("id") for e in first)
        rest = sse(other, job["jobId"], {**auth(), "Last-Event-ID": first[-1]["id"]})
    assert rest[-1]["data"]["state"] == "succeeded"
    seen = [e["id"] for e in first + rest]
    assert len(seen) == len(set(seen)), "no event twice"
    keys = [tuple(map(int, i.split("-"))) for i in seen]
    assert keys == sorted(keys), "in order"

    # Everything stored since the job began (lastEventId=0-0): what the two connections saw, bar the snapshot.
    everything = sse(stack.url, job["jobId"], auth(), params={"lastEventId": "0-0"})
    ids = [e["id"] for e in everything]
    assert set(seen[1:]) <= set(ids) and ids[ids.index(seen[1]):] == seen[1:], "nothing lost across the reconnect"
    assert everything[0]["data"]["state"] == "queued" and everything[-1]["data"]["state"] == "succeeded"
    assert all("workflow" not in e["data"] for e in everything)

    frames, code, _ = ws_events(stack.url, f"jobId={job['jobId']}&lastEventId=0-0&token={job['accessToken']}")
    assert [(f["id"], f["event"]) for f in frames] == [(e["id"], e["event"]) for e in everything]
    assert [f["job"]["progress"] for f in frames] == [e["data"]["progress"] for e in everything]
    assert code == 1000

    # A client that comes back after the end gets the final state once and the stream ends.
    late = sse(stack.url, job["jobId"], auth(), params={"lastEventId": ids[-1]})
    assert [e["data"]["state"] for e in late] == ["succeeded"]


def test_live_websocket_follows_a_job_to_its_thumbnail(sim_factory, stack_factory):
    sim = sim_factory(step_seconds=0.05)
    stack = stack_factory([sim.url], workers=1)
    stack.wait_workers_ready(1)
    job = stack.generate(txt2img(seed=2, steps=8)).json()
    frames, code, reason = ws_events(stack.url, f"jobId={job['jobId']}&token={job['accessToken']}")
    states = [f["job"]["state"] for f in frames]
    assert states[-1] == "succeeded" and "running" in states and code == 1000, (states, code, reason)
    assert any(f["event"] == "progress" for f in frames)
    [output] = frames[-1]["job"]["outputs"]
    png = httpx.get(stack.url + output["url"])  # no header, as <img src> loads it
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")


def test_access_tokens_open_one_job_and_nothing_else(sim_factory, stack_factory):
    sim = sim_factory()
    stack = stack_factory([sim.url], workers=0)
    mine = stack.generate(txt2img(3)).json()
    other = stack.generate(txt2img(4)).json()
    bobs = stack.generate(txt2img(5), token=BOB).json()
    assert mine["accessToken"] and mine["accessTokenExpiresAt"]
    assert stack.job(mine["jobId"])["accessToken"], "reading the job gives a token too"
    url = f"/api/comfyui/job/{mine['jobId']}/events"

    with httpx.stream("GET", stack.url + url, params={"token": mine["accessToken"]}, timeout=10) as r:
        assert r.status_code == 200
        [first] = read_sse(r, stop_after=lambda ev: True)
    assert first["data"]["jobId"] == mine["jobId"] and first["data"]["state"] == "queued"

    refused = [
        (url, other["accessToken"]),  # my other job's token
        (url, bobs["accessToken"]),  # another user's token
        (url, ALICE),  # an API token in a URL is never accepted
        (url, "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln"),  # nor an ID token
        (f"/api/comfyui/job/{bobs['jobId']}/events", mine["accessToken"]),
        (f"/api/comfyui/outputs/{bobs['jobId']}/x.png", mine["accessToken"]),
        (f"/api/comfyui/job/{'0' * 8}-0000-0000-0000-{'0' * 12}/events", mine["accessToken"]),
    ]
    for path, token in refused:
        r = stack.http.get(path, params={"token": token})
        assert r.status_code == 401 and r.json()["error"]["details"]["field"] == "token", (path, r.text)
    assert stack.http.get(url).status_code == 401, "no header and no token"
    r = stack.http.get(url, params={"token": mine["accessToken"]}, headers=auth(BOB))
    assert r.status_code == 404, "a caller who names itself is judged as itself"

    frames, code, reason = ws_events(stack.url, f"jobId={bobs['jobId']}&token={mine['accessToken']}")
    assert frames == [] and code == 4401, (code, reason)
    frames, code, reason = ws_events(stack.url, f"jobId={bobs['jobId']}", headers=auth(ALICE))
    assert frames == [] and code == 4404
    frames, code, reason = ws_events(stack.url, "token=x")
    assert code == 4422 and "jobId" in reason
    frames, code, reason = ws_events(stack.url, f"jobId={mine['jobId']}&token={mine['accessToken']}",
                                     headers={"Origin": "https://evil.example"})
    assert code == 4403 and frames == []
    r = stack.http.get(url, headers={**auth(), "Last-Event-ID": "yesterday"})
    assert r.status_code == 422 and "Last-Event-ID" in r.json()["error"]["message"]


def test_streams_share_one_subscription_are_capped_per_user_and_end_after_their_lifetime(
        sim_factory, stack_factory, redis_server):
    sim = sim_factory()
    stack = stack_factory([sim.url], workers=0, env={"COMFYFLEET_MAX_STREAMS_PER_USER": "2",
                                                     "COMFYFLEET_MAX_STREAM_SECONDS": "3"})
    job = stack.generate(txt2img(6)).json()
    url = f"{stack.url}/api/comfyui/job/{job['jobId']}/events"
    conn = redis.Redis.from_url(redis_server.url)
    with httpx.stream("GET", url, headers=auth(), timeout=30) as a, \
            httpx.stream("GET", url, params={"token": job["accessToken"]}, timeout=30) as b:
        assert a.status_code == b.status_code == 200
        third = stack.http.get(url, headers=auth())
        assert third.status_code == 429, third.text
        assert "max_streams_per_user" in third.json()["error"]["message"] and third.headers["retry-after"]
        metrics = stack.http.get("/metrics", headers=auth(ADMIN)).text
        figures = [line for line in metrics.splitlines() if line.startswith("comfyfleet_api_streams")]
        assert figures == ["comfyfleet_api_streams_open 2.0", "comfyfleet_api_streams_refused_total 1.0"], figures
        _, code, reason = ws_events(stack.url, f"jobId={job['jobId']}&token={job['accessToken']}")
        assert code == 4429 and "at most 2" in reason
        assert stack.http.get(url, headers=auth(ADMIN)).status_code == 200, "other users are not affected"
        [(_, hubs), (_, subscribers)] = conn.pubsub_numsub(f"{stack.prefix}:jobevents",
                                                           f"{stack.prefix}:jobevents:{job['jobId']}")
        assert hubs == subscribers == 1, "all streams of the API process share its one subscription"

        # The job is still queued (no workers): the stream ends by itself once its lifetime is up.
        events = read_sse(a)
        assert [e["data"]["state"] for e in events] == ["queued"]
    wait_for(lambda: stack.http.get(url, headers=auth(), timeout=5).status_code == 200, timeout=10,
             what="stream slots given back")

    # A client reconnecting with its last id gets what happened meanwhile, then the final state.
    stack.http.delete(f"/api/comfyui/job/{job['jobId']}", headers=auth())
    rest = sse(stack.url, job["jobId"], {**auth(), "Last-Event-ID": events[-1]["id"]})
    assert [e["data"]["state"] for e in rest] == ["cancelled"]

    job2 = stack.generate(txt2img(7)).json()
    frames, code, reason = ws_events(stack.url, f"jobId={job2['jobId']}&token={job2['accessToken']}")
    assert [f["job"]["state"] for f in frames] == ["queued"] and code == 4000 and "lastEventId" in reason


@pytest.mark.parametrize("configured", [True, False])
def test_cors_allows_only_the_configured_origins(sim_factory, stack_factory, configured):
    sim = sim_factory()
    env = {"COMFYFLEET_CORS_ORIGINS": "http://app.test:5173"} if configured else {}
    stack = stack_factory([sim.url], workers=0, env=env)
    preflight = {"Origin": "http://app.test:5173", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    r = stack.http.options("/api/comfyui/generate", headers=preflight)
    if not configured:
        assert r.status_code == 405 and "access-control-allow-origin" not in r.headers, "no CORS by default"
        return
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == "http://app.test:5173"
    assert r.headers["access-control-allow-credentials"] == "true"
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
    r = stack.http.options("/api/comfyui/generate", headers={**preflight, "Origin": "https://evil.example"})
    assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
    r = stack.generate(txt2img(8), headers={"Origin": "http://app.test:5173"})
    assert r.status_code == 202 and r.headers["access-control-allow-origin"] == "http://app.test:5173"
    assert "location" in r.headers["access-control-expose-headers"].lower()
    r = stack.http.get("/api/queue/stats", headers={"Origin": "http://app.test:5173"})
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == "http://app.test:5173", \
        "errors carry CORS headers too, so the page can read them"


def test_dashboard_is_served_and_me_says_who_is_admin(sim_factory, stack_factory):
    stack = stack_factory([], workers=0)
    page = stack.http.get("/dashboard", follow_redirects=True)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and "app.js" in page.text
    script = stack.http.get("/dashboard/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert stack.http.get("/api/comfyui/me", headers=auth(ALICE)).json() == {"owner": "alice", "admin": False}
    assert stack.http.get("/api/comfyui/me", headers=auth(ADMIN)).json() == {"owner": "root", "admin": True}
    assert stack.http.get("/api/comfyui/me").status_code == 401
