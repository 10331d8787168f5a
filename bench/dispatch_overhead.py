"""Dispatch overhead per job: end-to-end time minus the simulated execution time, with 1 and 4 simulators.

Runs the real local stack (redis-server, API, RQ workers, ComfyUI simulators) and prints figures; it asserts
nothing. Each job is a 512x512 txt2img of STEPS sampler steps at STEP_SECONDS each. The execution time is what
the pod itself reports in /history (execution_start to execution_success timestamps, as a real ComfyUI does);
everything above it is comfyfleet's overhead: API, queue, scheduling, websocket tracking, output fetch and
store, state updates, and the client following the job over SSE.

    python bench/dispatch_overhead.py [--jobs 40]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from comfyfleet.local import LocalStack

STEPS = 10
STEP_SECONDS = 0.02


def run_job(api: str, seed: int) -> tuple[float, float]:
    """(end-to-end seconds, seconds the pod spent executing the prompt)."""
    body = {"template": "txt2img", "params": {"seed": seed, "steps": STEPS, "width": 512, "height": 512}}
    started = time.perf_counter()
    with httpx.Client(base_url=api, timeout=60) as client:
        job = client.post("/api/comfyui/generate", json=body).json()
        with client.stream("GET", f"/api/comfyui/job/{job['jobId']}/events") as stream:
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    job = json.loads(line[6:])
                    if job["state"] in ("succeeded", "failed", "cancelled"):
                        break
        elapsed = time.perf_counter() - started
        pod = job["worker"].removeprefix("url:")
        history = client.get(f"{pod}/history/{job['jobId']}").json()[job["jobId"]]
    stamps = {name: data["timestamp"] for name, data in history["status"]["messages"] if "timestamp" in data}
    return elapsed, (stamps["execution_success"] - stamps["execution_start"]) / 1000


def measure(sims: int, jobs: int, data_dir: Path) -> None:
    stack = LocalStack(port=_port(), data_dir=data_dir / f"sims{sims}", workers=sims, sims=sims,
                       sim_args=["--step-seconds", str(STEP_SECONDS)])
    stack.start()
    try:
        for i in range(3):  # warm up connections and caches
            run_job(stack.api_url, 10_000 + i)
        sequential = [run_job(stack.api_url, i) for i in range(jobs)]
        executing_ms = statistics.median(e * 1000 for _, e in sequential)
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=sims * 2) as pool:
            list(pool.map(lambda s: run_job(stack.api_url, 50_000 + s), range(jobs)))
        wall = time.perf_counter() - started
    finally:
        stack.stop()
    overhead_ms = sorted((t - e) * 1000 for t, e in sequential)
    p95 = overhead_ms[int(len(overhead_ms) * 0.95) - 1]
    print(f"{sims} simulator(s), {jobs} jobs of {STEPS} steps x {STEP_SECONDS * 1000:.0f} ms "
          f"(pod execution median {executing_ms:.0f} ms):")
    print(f"  sequential: overhead per job median {statistics.median(overhead_ms):.1f} ms, "
          f"p95 {p95:.1f} ms, min {overhead_ms[0]:.1f} ms")
    ideal = jobs * executing_ms / 1000 / sims
    print(f"  concurrent ({sims * 2} clients): {jobs / wall:.1f} jobs/s, wall {wall:.2f} s "
          f"(ideal {ideal:.2f} s at zero overhead)")


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for sims in (1, 4):
            measure(sims, args.jobs, Path(tmp))


if __name__ == "__main__":
    main()
