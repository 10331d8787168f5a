"""Control-plane CPU per job: API + dispatchers + Redis CPU time (utime + stime from /proc) over a batch.

A batch of trivial jobs (the `weightless` template) is submitted to PODS simulated pods (no SSE clients;
the bench polls /api/queue/stats once a second, which the API's figure includes). CPU is read from
/proc/<pid>/stat of each part's process tree before the first submit and after the last job is final.
The control plane's idle CPU (health probes, maintenance loops) over the same wall time is measured
first and shown separately: the per-job figure includes it, as a real deployment pays it too.

    python bench/cpu.py [--jobs 150 --pods 4 --dispatchers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from common import Stack, cpu_seconds, finished, queue_stats, start_pods, submit_many, wait_finished, workspace


def run(jobs: int = 150, pods: int = 4, dispatchers: int = 2, idle_seconds: float = 5.0,
        keep: Path | None = None) -> dict[str, Any]:
    with workspace("cpu", keep) as (tmp, procs):
        fleet = start_pods(procs, tmp, pods)
        stack = Stack(procs, tmp, fleet.urls).start(dispatchers=dispatchers)
        stack.wait_ready()
        asyncio.run(submit_many(stack.api_url, [{"template": "weightless"}] * pods * 2))  # warm every path
        wait_finished(stack.api_url, pods * 2, procs, timeout=120)
        parts = stack.control_plane()
        time.sleep(1)
        before = {name: cpu_seconds(pid) for name, pid in parts.items()}
        t_idle = time.monotonic()
        time.sleep(idle_seconds)
        idle = {name: cpu_seconds(pid) - before[name] for name, pid in parts.items()}
        idle_rate = sum(idle.values()) / (time.monotonic() - t_idle)
        done_before = finished(queue_stats(stack.api_url))
        before = {name: cpu_seconds(pid) for name, pid in parts.items()}
        started = time.monotonic()
        asyncio.run(submit_many(stack.api_url, [{"template": "weightless"}] * jobs, concurrency=8))
        wait_finished(stack.api_url, done_before + jobs, procs, timeout=60 + jobs * 2, interval=1.0)
        wall = time.monotonic() - started
        used = {name: cpu_seconds(pid) - before[name] for name, pid in parts.items()}
        stats = queue_stats(stack.api_url)
    dispatch = sum(v for k, v in used.items() if k.startswith("dispatcher"))
    total = sum(used.values())
    return {
        "jobs": jobs, "pods": pods, "dispatchers": dispatchers, "wall_s": wall, "jobs_per_s": jobs / wall,
        "failed": stats["failed"], "cpu_s": used,
        "ms_per_job": {"api": used["api"] / jobs * 1000, "dispatchers": dispatch / jobs * 1000,
                       "redis": used["redis"] / jobs * 1000, "total": total / jobs * 1000},
        "idle_cpu_per_s": idle_rate, "idle_ms_per_job": idle_rate * wall / jobs * 1000,
    }


def report(r: dict[str, Any]) -> str:
    m = r["ms_per_job"]
    return (f"{r['jobs']} jobs on {r['pods']} pods, {r['dispatchers']} dispatchers, {r['jobs_per_s']:.1f} jobs/s: "
            f"control-plane CPU {m['total']:.1f} ms/job (goal <= 20): API {m['api']:.1f}, dispatchers "
            f"{m['dispatchers']:.1f}, Redis {m['redis']:.1f}; of which idle loops {r['idle_ms_per_job']:.1f}"
            + (f"; {r['failed']} jobs FAILED" if r["failed"] else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=150)
    parser.add_argument("--pods", type=int, default=4)
    parser.add_argument("--dispatchers", type=int, default=2)
    parser.add_argument("--keep", type=Path)
    args = parser.parse_args()
    r = run(args.jobs, args.pods, args.dispatchers, keep=args.keep)
    print(report(r))
    print(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
