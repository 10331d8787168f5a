"""Load: N simulated users submitting, streaming and polling jobs for a while; prints submit p50/p99 and checks.

    .venv/bin/python bench/load_users.py                       # 100 users, 180 s, against a fresh `comfyfleet up`
    .venv/bin/python bench/load_users.py --users 10 --seconds 20 --sims 2
    .venv/bin/python bench/load_users.py --api https://fleet.example --tokens tokens.json   # an existing install

Without --api it starts `comfyfleet up` (Redis, API, RQ workers, simulators) with static tokens, one per
user, so per-user limits apply per user as in production. Each user loops: submit a job (a small txt2img),
then follow it to the end by SSE (half the users) or by polling (the other half), then think for 0-1 s.

Passes (exit 0) when: no answer was a 5xx, every 429 named a limit, and every accepted job is accounted for
(it reached a final state by the end of the drain, or is still readable with a non-final state: none lost).
Not in the default test run: it is long and prints figures (bench/).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
FINAL = {"succeeded", "failed", "cancelled"}


@dataclass
class Tally:
    submit_latency: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    limits: Counter[str] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    accepted: dict[str, str] = field(default_factory=dict)  # job id -> token
    final: Counter[str] = field(default_factory=Counter)
    unnamed_429: int = 0

    def record(self, route: str, r: httpx.Response) -> None:
        self.statuses[f"{route} {r.status_code}"] += 1
        if r.status_code >= 500:
            self.server_errors.append(f"{route} {r.status_code} {r.text[:200]}")
        if r.status_code == 429:
            try:
                self.limits[r.json()["error"]["details"]["limit"]] += 1
            except (ValueError, KeyError, TypeError):
                self.unnamed_429 += 1


def body(seed: int) -> dict:
    return {"template": "txt2img", "params": {"seed": seed, "steps": 4, "width": 512, "height": 512,
                                              "prompt": "load test"}}


async def follow_sse(client: httpx.AsyncClient, job_id: str, token: str, tally: Tally, deadline: float) -> str | None:
    try:
        async with client.stream("GET", f"/api/comfyui/job/{job_id}/events", headers=auth(token),
                                 timeout=httpx.Timeout(30, connect=5)) as r:
            tally.record("events", r)
            if r.status_code != 200:
                return None
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    state = json.loads(line[6:])["state"]
                    if state in FINAL:
                        return state
                if time.monotonic() > deadline:
                    return None
    except httpx.HTTPError as exc:
        tally.statuses[f"events {type(exc).__name__}"] += 1
    return None


async def poll(client: httpx.AsyncClient, job_id: str, token: str, tally: Tally, deadline: float) -> str | None:
    while time.monotonic() < deadline:
        try:
            r = await client.get(f"/api/comfyui/job/{job_id}", headers=auth(token))
        except httpx.HTTPError as exc:
            tally.statuses[f"job {type(exc).__name__}"] += 1
            await asyncio.sleep(1)
            continue
        tally.record("job", r)
        if r.status_code == 200 and r.json()["state"] in FINAL:
            return r.json()["state"]
        await asyncio.sleep(0.5)
    return None


async def user(n: int, token: str, client: httpx.AsyncClient, tally: Tally, until: float) -> None:
    rng = random.Random(n)
    streams = n % 2 == 0
    while time.monotonic() < until:
        started = time.monotonic()
        try:
            r = await client.post("/api/comfyui/generate", json=body(rng.randrange(1 << 30)), headers=auth(token))
        except httpx.HTTPError as exc:
            tally.statuses[f"generate {type(exc).__name__}"] += 1
            await asyncio.sleep(1)
            continue
        tally.submit_latency.append(time.monotonic() - started)
        tally.record("generate", r)
        if r.status_code == 429:
            await asyncio.sleep(min(float(r.headers.get("retry-after", "1")), 10))
            continue
        if r.status_code not in (200, 202):
            await asyncio.sleep(1)
            continue
        job_id = r.json()["jobId"]
        tally.accepted[job_id] = token
        follow = follow_sse if streams else poll
        state = await follow(client, job_id, token, tally, until + 60)
        if state:
            tally.final[state] += 1
        await asyncio.sleep(rng.random())


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def account(client: httpx.AsyncClient, tally: Tally, drain_seconds: float) -> tuple[Counter[str], list[str]]:
    """Final state of every accepted job after a drain; ids that cannot be read back are lost."""
    deadline = time.monotonic() + drain_seconds
    states: dict[str, str] = {}
    lost: list[str] = []
    pending = list(tally.accepted)
    while pending:
        still = []
        for job_id in pending:
            r = await client.get(f"/api/comfyui/job/{job_id}", headers=auth(tally.accepted[job_id]))
            if r.status_code == 404:
                lost.append(job_id)
                continue
            states[job_id] = r.json()["state"] if r.status_code == 200 else f"HTTP {r.status_code}"
            if states[job_id] not in FINAL:
                still.append(job_id)
        pending = still
        if not pending or time.monotonic() > deadline:
            break
        await asyncio.sleep(1)
    return Counter(states.values()), lost


def start_stack(args: argparse.Namespace, tokens: list[dict]) -> tuple[subprocess.Popen, str, Path]:
    data = Path(tempfile.mkdtemp(prefix="comfyfleet-load-"))
    port = args.port
    env = {**os.environ, "COMFYFLEET_AUTH_MODE": "static", "COMFYFLEET_API_TOKENS": json.dumps(tokens),
           "COMFYFLEET_SIM_STEP_SECONDS": str(args.step_seconds)}
    log = open(data / "up.log", "wb")  # noqa: SIM115 - lives as long as the stack
    proc = subprocess.Popen([sys.executable, "-m", "comfyfleet", "up", "--port", str(port), "--data-dir", str(data),
                             "--sims", str(args.sims), "--workers", str(args.workers)],
                            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health/detailed", timeout=2).json()["workers"]["ready"] >= args.sims:
                return proc, url, data
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        if proc.poll() is not None:
            break
        time.sleep(1)
    os.killpg(proc.pid, signal.SIGTERM)
    raise SystemExit(f"`comfyfleet up` did not get ready; see {data / 'up.log'}")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def run(args: argparse.Namespace) -> int:
    tokens = ([{"token": f"load-user-{n:03d}-0123456789abcdef", "owner": f"user{n:03d}"} for n in range(args.users)]
              if not args.tokens else json.loads(Path(args.tokens).read_text()))
    proc = None
    url = args.api
    if url is None:
        proc, url, data = start_stack(args, tokens)
        print(f"stack: {url} (logs in {data})")
    tally = Tally()
    limits = httpx.Limits(max_connections=args.users * 2 + 10, max_keepalive_connections=args.users * 2)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
            started = time.monotonic()
            until = started + args.seconds
            await asyncio.gather(*(user(n, tokens[n % len(tokens)]["token"], client, tally, until)
                                   for n in range(args.users)))
            elapsed = time.monotonic() - started
            states, lost = await account(client, tally, args.drain_seconds)
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    lat = tally.submit_latency
    print(f"users {args.users}, {elapsed:.0f} s, submits {len(lat)}, accepted {len(tally.accepted)} "
          f"({len(tally.accepted) / elapsed:.1f} jobs/s)")
    mean = statistics.fmean(lat) if lat else float("nan")
    print(f"submit latency p50 {percentile(lat, 0.5) * 1000:.0f} ms, p99 {percentile(lat, 0.99) * 1000:.0f} ms, "
          f"max {max(lat, default=float('nan')) * 1000:.0f} ms, mean {mean * 1000:.0f} ms")
    print("answers:", dict(sorted(tally.statuses.items())))
    print("429 by limit:", dict(tally.limits), f"(unnamed: {tally.unnamed_429})")
    print("accepted jobs by state after drain:", dict(states), f"lost: {len(lost)}")
    ok = not tally.server_errors and not tally.unnamed_429 and not lost
    for line in tally.server_errors[:10]:
        print("5xx:", line)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--users", type=int, default=100)
    p.add_argument("--seconds", type=float, default=180)
    p.add_argument("--drain-seconds", type=float, default=120, help="wait this long for accepted jobs to finish")
    p.add_argument("--api", help="an existing API (then --tokens: a JSON list of {token, owner})")
    p.add_argument("--tokens")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--sims", type=int, default=4)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--step-seconds", type=float, default=0.02, help="simulator seconds per sampler step")
    raise SystemExit(asyncio.run(run(p.parse_args())))


if __name__ == "__main__":
    main()
