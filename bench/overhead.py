"""Dispatch overhead, A/B in one run: a trivial graph through comfyfleet vs the same graph direct to the same pod.

A (comfyfleet): POST /api/comfyui/generate {"template": "weightless"} -> follow the job over SSE
(GET /api/comfyui/job/{id}/events) until its final state -> GET its output from the API.
B (direct): a minimal ComfyUI client on the same simulator: a new websocket, POST /prompt, wait for
`executing {node: null}` of that prompt, GET /history/{id}, GET /view of the output.

Both use one keep-alive HTTP client (as an app would); B opens a new websocket per job as the minimal
client does. Pairs alternate their order (AB, BA, ...) so drift on a shared machine hits both. One
simulator, one dispatcher (the `comfyfleet up` default). Also samples the RSS of the API, the
dispatcher and the simulated pod, idle and while jobs run (the memory table).

    python bench/overhead.py [--pairs 30]
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from common import Stack, median, pct, rss_mib, start_pods, workspace
from websockets.sync.client import connect

from comfyfleet.jobs.templates import TEMPLATES

WEIGHTLESS = TEMPLATES["weightless"]


def through_comfyfleet(client: httpx.Client) -> float:
    started = time.perf_counter()
    job = client.post("/api/comfyui/generate", json={"template": "weightless"}).json()
    with client.stream("GET", f"/api/comfyui/job/{job['jobId']}/events") as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                job = json.loads(line[6:])
                if job["state"] in ("succeeded", "failed", "cancelled"):
                    break
    if job["state"] != "succeeded":
        raise RuntimeError(f"job {job['jobId']} ended {job['state']}: {job.get('error')}")
    output = job["outputs"][0]
    url = output.get("url") or f"/api/comfyui/outputs/{job['jobId']}/{output['filename']}"
    data = client.get(url).content
    if not data.startswith(b"\x89PNG"):
        raise RuntimeError("output is not a PNG")
    return time.perf_counter() - started


def direct(client: httpx.Client, pod: str, workflow: dict[str, Any] | None = None) -> float:
    started = time.perf_counter()
    client_id = uuid.uuid4().hex
    with connect(f"{pod.replace('http', 'ws', 1)}/ws?clientId={client_id}", open_timeout=30) as ws:
        r = client.post(f"{pod}/prompt", json={"prompt": workflow or WEIGHTLESS, "client_id": client_id})
        prompt_id = r.json()["prompt_id"]
        while True:
            frame = ws.recv(timeout=60)
            if isinstance(frame, bytes):
                continue
            msg = json.loads(frame)
            data = msg.get("data", {})
            if msg["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                break
            if msg["type"] == "execution_error" and data.get("prompt_id") == prompt_id:
                raise RuntimeError(f"direct prompt failed: {data}")
    entry = client.get(f"{pod}/history/{prompt_id}").json()[prompt_id]
    image = next(img for out in entry["outputs"].values() for img in out.get("images", []))
    data = client.get(f"{pod}/view", params={"filename": image["filename"], "subfolder": image["subfolder"],
                                             "type": image["type"]}).content
    if not data.startswith(b"\x89PNG"):
        raise RuntimeError("output is not a PNG")
    return time.perf_counter() - started


def run(pairs: int = 30, warmup: int = 5, keep: Path | None = None) -> dict[str, Any]:
    with workspace("overhead", keep) as (tmp, procs):
        pods = start_pods(procs, tmp, 1)
        stack = Stack(procs, tmp, pods.urls).start(dispatchers=1)
        stack.wait_ready()
        pod = pods.urls[0]
        assert stack.api is not None
        time.sleep(2)  # let start-up work (catalog reads, first probes) settle before the idle sample
        idle = {"api": rss_mib(stack.api.pid), "dispatcher": rss_mib(stack.dispatchers[0].pid),
                "pod": rss_mib(pods.pids[0])}
        a: list[float] = []
        b: list[float] = []
        with httpx.Client(base_url=stack.api_url, timeout=60) as api, httpx.Client(timeout=60) as raw:
            for _ in range(warmup):  # connections, imports, caches on both paths
                through_comfyfleet(api)
                direct(raw, pod)
            for i in range(pairs):
                if i % 2 == 0:
                    a.append(through_comfyfleet(api))
                    b.append(direct(raw, pod))
                else:
                    b.append(direct(raw, pod))
                    a.append(through_comfyfleet(api))
            busy = {"api": rss_mib(stack.api.pid), "dispatcher": rss_mib(stack.dispatchers[0].pid),
                    "pod": rss_mib(pods.pids[0])}
    a_ms = [x * 1000 for x in a]
    b_ms = [x * 1000 for x in b]
    return {
        "pairs": pairs,
        "comfyfleet_p50_ms": median(a_ms), "comfyfleet_p95_ms": pct(a_ms, 95),
        "direct_p50_ms": median(b_ms), "direct_p95_ms": pct(b_ms, 95),
        "ratio_p50": median(a_ms) / median(b_ms), "ratio_p95": pct(a_ms, 95) / pct(b_ms, 95),
        "overhead_p50_ms": median(a_ms) - median(b_ms),
        "rss_idle_mib": idle, "rss_busy_mib": busy,
    }


def report(r: dict[str, Any]) -> str:
    return (f"{r['pairs']} pairs: comfyfleet p50 {r['comfyfleet_p50_ms']:.1f} ms, p95 {r['comfyfleet_p95_ms']:.1f} ms; "
            f"direct p50 {r['direct_p50_ms']:.1f} ms, p95 {r['direct_p95_ms']:.1f} ms; "
            f"p50 ratio {r['ratio_p50']:.2f}x (goal <= 1.5), p95 ratio {r['ratio_p95']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="keep logs and data in this folder")
    args = parser.parse_args()
    r = run(args.pairs, args.warmup, args.keep)
    print(report(r))
    print(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
