"""Fleet efficiency: how busy N simulated pods are kept by the default dispatch (2 dispatcher processes).

N pods, each job a txt2img of STEPS sampler steps (64x64) whose pod time is T = STEPS x STEP_SECONDS
(about 1 s), JOBS_PER_POD x N jobs posted at once (16 in flight) through the API after one warm-up round
of N jobs. busy fraction = ideal / makespan, ideal = JOBS_PER_POD x T (every pod back to back at zero
dispatch cost), makespan = first submit -> last job finished (the job records' finishedAt). Submitting
is part of the makespan: the API has to keep up too. The pods live in one simulator process when
`comfyfleet sim --count` exists, else one process each (up to 32).

    python bench/efficiency.py --pods 4 [--job-seconds 1.0 --jobs-per-pod 10 --dispatchers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
from common import (
    Stack,
    cpu_seconds,
    finished,
    get_jobs,
    median,
    queue_stats,
    rss_mib,
    start_pods,
    submit_many,
    ts,
    txt2img,
    wait_finished,
    workspace,
)
from overhead import direct

from comfyfleet.jobs.params import GenerateParams
from comfyfleet.jobs.templates import render_template


def run(pods: int = 4, job_seconds: float = 1.0, steps: int = 10, jobs_per_pod: int = 10, dispatchers: int = 2,
        keep: Path | None = None, prefetch: int = 0) -> dict[str, Any]:
    step_seconds = job_seconds / steps
    with workspace(f"fleet{pods}", keep) as (tmp, procs):
        fleet = start_pods(procs, tmp, pods, step_seconds)
        with httpx.Client(timeout=60) as raw:  # the pod's own time per job: a minimal direct client, no dispatch
            # distinct seeds: a repeated graph would be served from ComfyUI's output cache in no time
            direct_s = min(direct(raw, fleet.urls[0], render_template(
                "txt2img", GenerateParams(**txt2img(800_000 + i, steps)["params"]))) for i in range(3))
        # prefetch 1: each pod gets its next prompt queued while it runs one (a pool's `prefetch: 1`; default 0)
        stack = Stack(procs, tmp, fleet.urls).start(dispatchers=dispatchers,
                                                    extra_env={"COMFYFLEET_COMFYUI_PREFETCH": str(prefetch)})
        stack.wait_ready()
        warm_t0, warm_ids = asyncio.run(submit_many(stack.api_url, [txt2img(900_000 + i, steps) for i in range(pods)]))
        wait_finished(stack.api_url, pods, procs, timeout=120 + pods)
        warm = get_jobs(stack.api_url, warm_ids)
        warm_all_at_once = max(ts(j["startedAt"]) or 0 for j in warm) < min(ts(j["finishedAt"]) or 0 for j in warm)
        parts = stack.control_plane() | {"sim": fleet.pids[0]} if len(fleet.pids) == 1 else stack.control_plane()
        total = pods * jobs_per_pod
        done_before = finished(queue_stats(stack.api_url))
        before = {name: cpu_seconds(pid) for name, pid in parts.items()}
        peak = {"dispatchers": 0.0, "active": 0}

        def sample(stats: dict[str, Any]) -> None:
            peak["dispatchers"] = max(peak["dispatchers"], sum(rss_mib(p.pid) for p in stack.dispatchers))
            peak["active"] = max(peak["active"], int(stats["active"]))

        t0, ids = asyncio.run(submit_many(stack.api_url, [txt2img(i, steps) for i in range(total)]))
        submitted = time.time() - t0
        wait_finished(stack.api_url, done_before + total, procs, timeout=jobs_per_pod * job_seconds * 20 + 300,
                      interval=0.5, sample=sample)
        cpu = {name: cpu_seconds(pid) - before[name] for name, pid in parts.items()}
        jobs = get_jobs(stack.api_url, ids)
    states = {s: sum(j["state"] == s for j in jobs) for s in ("succeeded", "failed", "cancelled")}
    makespan = max(ts(j["finishedAt"]) or 0 for j in jobs) - t0
    first: dict[str, float] = {}
    for j in jobs:
        started, pod = ts(j["startedAt"]), j["worker"]
        if started is not None and pod:
            first[pod] = min(first.get(pod, started), started)
    latencies = sorted(s - t0 for s in first.values())
    ideal = jobs_per_pod * job_seconds
    control = sum(v for k, v in cpu.items() if k != "sim")
    return {
        "pods": pods, "jobs": total, "job_seconds": job_seconds, "dispatchers": dispatchers, "prefetch": prefetch,
        "multi_pod_sim": len(fleet.pids) == 1 and pods > 1, "states": states, "submit_s": submitted,
        "makespan_s": makespan, "ideal_s": ideal, "busy_fraction": ideal / makespan, "direct_job_s": direct_s,
        "busy_fraction_vs_direct": jobs_per_pod * direct_s / makespan,
        "first_start_s": {"min": latencies[0] if latencies else None, "p50": median(latencies) if latencies else None,
                          "max": latencies[-1] if latencies else None},
        "pods_never_used": pods - len(first), "warmup_all_at_once": warm_all_at_once,
        "cpu_s": cpu, "control_ms_per_job": control / total * 1000,
        "dispatchers_peak_rss_mib": peak["dispatchers"], "peak_active": peak["active"], "warmup_t0": warm_t0,
    }


def report(r: dict[str, Any]) -> str:
    f = r["first_start_s"]
    first = f"first job per pod after {f['min']:.2f}/{f['p50']:.2f}/{f['max']:.2f} s (min/p50/max)" if f["min"] else ""
    return (f"N={r['pods']}: {r['jobs']} jobs x T={r['job_seconds']:.1f} s, {r['dispatchers']} dispatchers, "
            f"prefetch {r.get('prefetch', 0)}: makespan "
            f"{r['makespan_s']:.2f} s vs ideal {r['ideal_s']:.1f} s -> busy {r['busy_fraction'] * 100:.1f} % "
            f"(goal >= 98 %; {r['busy_fraction_vs_direct'] * 100:.1f} % of the direct client's "
            f"{r['direct_job_s']:.2f} s per job); "
            f"submit {r['submit_s']:.1f} s; {first}; states {r['states']}; control plane "
            f"{r['control_ms_per_job']:.1f} ms CPU/job; dispatchers peak RSS {r['dispatchers_peak_rss_mib']:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=4)
    parser.add_argument("--job-seconds", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--jobs-per-pod", type=int, default=10)
    parser.add_argument("--dispatchers", type=int, default=2)
    parser.add_argument("--prefetch", type=int, choices=(0, 1), default=0)
    parser.add_argument("--keep", type=Path)
    args = parser.parse_args()
    r = run(args.pods, args.job_seconds, args.steps, args.jobs_per_pod, args.dispatchers, args.keep, args.prefetch)
    print(report(r))
    print(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
