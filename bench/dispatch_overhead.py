"""Dispatch overhead per job: end-to-end time minus the simulated execution time, with 1 and 4 simulators.

Runs the real local stack (redis-server, API, RQ workers, ComfyUI simulators) and prints figures; it asserts
nothing. Each job is a txt2img of STEPS sampler steps at STEP_SECONDS each on the simulator, so its simulated
execution time is STEPS * STEP_SECONDS; everything above that is comfyfleet's overhead (API, queue, scheduling,
websocket tracking, output fetch and store, state updates).

    python bench/dispatch_overhead.py [--jobs 40]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from comfyfleet.local import LocalStack

STEPS = 10
STEP_SECONDS = 0.02
SIMULATED = STEPS * STEP_SECONDS


def run_job(api: str, seed: int) -> float:
    body = {"template": "txt2img", "params": {"seed": seed, "steps": STEPS}}
    started = time.perf_counter()
    with httpx.Client(base_url=api, timeout=60) as client:
        job = client.post("/api/comfyui/generate", json=body).json()
        with client.stream("GET", f"/api/comfyui/job/{job['jobId']}/events") as stream:
            for line in stream.iter_lines():
                if line.startswith("data: ") and any(f'"state": "{s}"' in line or f'"state":"{s}"' in line
                                                     for s in ("succeeded", "failed", "cancelled")):
                    break
    return time.perf_counter() - started


def measure(sims: int, jobs: int, data_dir: Path) -> None:
    stack = LocalStack(port=_port(), data_dir=data_dir / f"sims{sims}", workers=sims, sims=sims,
                       sim_args=["--step-seconds", str(STEP_SECONDS)])
    stack.start()
    try:
        for i in range(3):  # warm up connections and caches
            run_job(stack.api_url, 10_000 + i)
        sequential = [run_job(stack.api_url, i) for i in range(jobs)]
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=sims * 2) as pool:
            list(pool.map(lambda s: run_job(stack.api_url, 50_000 + s), range(jobs)))
        wall = time.perf_counter() - started
    finally:
        stack.stop()
    overhead_ms = sorted((t - SIMULATED) * 1000 for t in sequential)
    p95 = overhead_ms[int(len(overhead_ms) * 0.95) - 1]
    print(f"{sims} simulator(s), {jobs} jobs of {SIMULATED * 1000:.0f} ms simulated execution:")
    print(f"  sequential: overhead per job median {statistics.median(overhead_ms):.1f} ms, "
          f"p95 {p95:.1f} ms, min {overhead_ms[0]:.1f} ms")
    ideal = jobs * SIMULATED / sims
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
