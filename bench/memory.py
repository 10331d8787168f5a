"""Memory with many jobs in flight: total dispatcher RSS while PODS long jobs run at once on PODS pods.

PODS simulated pods (one simulator process when `comfyfleet sim --count` exists), 2 dispatcher processes
(the chart's default), PODS txt2img jobs of STEPS x STEP_SECONDS (long enough to all be running at the
same time). Samples the RSS (/proc, whole process trees) of the dispatchers, the API and the simulator
when idle and once every job is running (queue stats `active` == PODS), and reports the peak.

    python bench/memory.py --pods 200 [--dispatchers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from common import Stack, queue_stats, rss_mib, start_pods, submit_many, txt2img, wait_until, workspace


def run(pods: int = 200, dispatchers: int = 2, steps: int = 60, step_seconds: float = 1.0,
        keep: Path | None = None) -> dict[str, Any]:
    with workspace(f"memory{pods}", keep) as (tmp, procs):
        fleet = start_pods(procs, tmp, pods, step_seconds)
        stack = Stack(procs, tmp, fleet.urls).start(dispatchers=dispatchers)
        stack.wait_ready(timeout=300)
        assert stack.api is not None
        time.sleep(2)

        def sample() -> dict[str, float]:
            return {"dispatchers": sum(rss_mib(p.pid) for p in stack.dispatchers),
                    "dispatcher_max": max(rss_mib(p.pid) for p in stack.dispatchers),
                    "api": rss_mib(stack.api.pid), "sim_total": sum(rss_mib(pid) for pid in fleet.pids)}

        idle = sample()
        started = time.monotonic()
        asyncio.run(submit_many(stack.api_url, [txt2img(i, steps) for i in range(pods)]))
        wait_until(lambda: queue_stats(stack.api_url)["active"] >= pods, f"{pods} jobs running at once", procs,
                   timeout=steps * step_seconds * 0.8)
        ramp = time.monotonic() - started
        busy: dict[str, float] = {}
        for _ in range(5):  # a few samples over ~5 s of 200 websockets' progress events
            busy = {k: max(v, busy.get(k, 0.0)) for k, v in sample().items()}
            time.sleep(1)
        active = queue_stats(stack.api_url)["active"]
    return {"pods": pods, "dispatchers": dispatchers, "in_flight": active, "ramp_s": ramp, "idle_mib": idle,
            "busy_mib": busy, "per_job_kib": (busy["dispatchers"] - idle["dispatchers"]) / pods * 1024,
            "sim_per_pod_mib": busy["sim_total"] / pods, "multi_pod_sim": len(fleet.pids) == 1 and pods > 1}


def report(r: dict[str, Any]) -> str:
    return (f"{r['in_flight']} jobs in flight on {r['pods']} pods, {r['dispatchers']} dispatchers: dispatcher RSS "
            f"total {r['busy_mib']['dispatchers']:.0f} MiB (goal <= 300 MB; idle {r['idle_mib']['dispatchers']:.0f}, "
            f"{r['per_job_kib']:.0f} KiB per job); API {r['busy_mib']['api']:.0f} MiB; simulator "
            f"{r['sim_per_pod_mib']:.1f} MiB per pod; all running after {r['ramp_s']:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=200)
    parser.add_argument("--dispatchers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--step-seconds", type=float, default=1.0)
    parser.add_argument("--keep", type=Path)
    args = parser.parse_args()
    r = run(args.pods, args.dispatchers, args.steps, args.step_seconds, args.keep)
    print(report(r))
    print(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
