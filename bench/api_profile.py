"""Where the front door's time goes: `comfyfleet api` (1 process) under pyinstrument while wrk POSTs jobs.

Fresh redis-server, one simulator (so the graph is validated against its catalog), no dispatcher. wrk
(-t2 -c64) runs 2 s unmeasured, then DURATION s with sampling on. Writes the text tree to
bench/results/profile-api.txt and returns the top functions per request (µs). The submit is one script call
on the API's asyncio Redis client, so its wait shows under `LuaScript.run_async`; the few blocking calls left
(catalog reload, pruning a full fair-use set) run in threads and show as waits.

    python bench/api_profile.py [--duration 8]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
from common import NO_FAIR_USE_LIMITS, RESULTS, Unavailable, cpu_seconds, free_port, start_pods, wait_until, workspace
from dispatch_profile import _aggregate
from frontdoor import BODY, WRK_SCRIPT, ensure_wrk, parse_wrk


def run(duration: int = 8, keep: Path | None = None, out_dir: Path = RESULTS) -> dict[str, Any]:
    from pyinstrument.renderers import ConsoleRenderer
    from pyinstrument.session import Session

    wrk = ensure_wrk()
    binary = shutil.which("redis-server")
    if binary is None:
        raise Unavailable("redis-server is not installed")
    out_dir.mkdir(parents=True, exist_ok=True)
    with workspace("api-profile", keep) as (tmp, procs):
        pods = start_pods(procs, tmp, 1)
        redis_port, port = free_port(), free_port()
        procs.spawn("redis", [binary, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", str(tmp)])
        env = {"COMFYFLEET_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "COMFYFLEET_AUTH_MODE": "none",
               "COMFYFLEET_COMFYUI_URLS": pods.urls[0], "COMFYFLEET_DATA_DIR": str(tmp / "data"),
               "COMFYFLEET_LOG_LEVEL": "WARNING", "COMFYFLEET_HOST": "127.0.0.1", "COMFYFLEET_PORT": str(port),
               **NO_FAIR_USE_LIMITS}
        session_path = tmp / "api.pyisession"
        api = procs.spawn("api", [sys.executable, str(Path(__file__).with_name("profiled_api.py")),
                                  str(session_path)], env)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: int(httpx.get(f"{url}/health/detailed", timeout=5).json()["workers"]["ready"]) >= 1,
                   "the API with a ready pod", procs, timeout=120)
        wait_until(lambda: httpx.post(f"{url}/api/comfyui/generate", json=json.loads(BODY), timeout=30)
                   .status_code == 202, "a validated generate", procs, timeout=60)
        script = tmp / "post.lua"
        script.write_text(WRK_SCRIPT)
        target = f"{url}/api/comfyui/generate"
        subprocess.run([wrk, "-t2", "-c64", "-d2s", "-s", str(script), target], capture_output=True, timeout=120)
        os.kill(api.pid, signal.SIGUSR1)
        cpu0 = cpu_seconds(api.pid)
        out = subprocess.run([wrk, "-t2", "-c64", f"-d{duration}s", "--latency", "-s", str(script), target],
                             capture_output=True, text=True, timeout=duration + 120)
        cpu = cpu_seconds(api.pid) - cpu0
        os.kill(api.pid, signal.SIGUSR2)
        wait_until(session_path.exists, "the profile session", procs, timeout=60)
        session = Session.load(str(session_path))
    measured = parse_wrk(out.stdout)
    text = ConsoleRenderer(unicode=False, color=False, show_all=False, short_mode=False).render(session)
    (out_dir / "profile-api.txt").write_text(
        f"# `comfyfleet api` (1 process) under pyinstrument while wrk -t2 -c64 -d{duration}s POSTed\n"
        "# {\"template\": \"weightless\"} (validated against one simulator's catalog; no dispatcher).\n"
        "# Event-loop thread only, wall clock; the submit's Redis wait shows under LuaScript.run_async.\n"
        "# bench/api_profile.py writes this.\n\n" + text)
    root = session.root_frame()
    own, inclusive = _aggregate(root) if root is not None else ({}, {})
    per_req = 1e6 / max(1, measured["requests"])
    skip = ("epoll", "select", "_run_once", "run_forever", "<module>", "run (", "_run_module", "_run_code",
            "main (", "Runner.run", "Server.serve", "Server._serve", "run_until_complete", "uvloop")
    return {
        "duration_s": duration, **measured, "api_cpu_ms_per_req": cpu / max(1, measured["requests"]) * 1000,
        "top_inclusive_us_per_req": sorted(((k, v * per_req) for k, v in inclusive.items()
                                            if not any(s in k for s in skip)), key=lambda kv: -kv[1])[:40],
        "top_own_us_per_req": sorted(((k, v * per_req) for k, v in own.items() if not any(s in k for s in skip)),
                                     key=lambda kv: -kv[1])[:12],
        "text": str(out_dir / "profile-api.txt"),
    }


def report(r: dict[str, Any]) -> str:
    lines = [f"API under pyinstrument, wrk {r['duration_s']} s: {r['rps']:.0f} req/s (profiled), "
             f"{r['api_cpu_ms_per_req']:.2f} ms CPU/request; tree in {r['text']}", "  top inclusive (us/request):"]
    lines += [f"    {v:8.0f}  {k}" for k, v in r["top_inclusive_us_per_req"][:10]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--keep", type=Path)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    r = run(args.duration, args.keep, args.out)
    print(report(r))


if __name__ == "__main__":
    main()
