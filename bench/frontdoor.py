"""The front door side by side: comfyfleet's POST /api/comfyui/generate vs a minimal Express 5 + Bull 4 app.

Both take the same JSON body (the same fields and limits, 422 naming the field), enqueue, and answer 202
with a job id; no dispatcher runs, so jobs only queue. The Express app (bench/express/server.js) is
`npm install`ed into a temporary folder. comfyfleet runs as `comfyfleet api --workers N` (uvloop +
httptools) with one healthy simulator, so the real validation (the graph against the pod's node catalog)
is on; Express is `node server.js` with N cluster processes. Every run gets a fresh redis-server.
wrk -t2 -c64 -d15s --latency POSTs {"template": "weightless"}; runs alternate (comfyfleet, Express,
Express, comfyfleet, ...). Also records each server's CPU per request (/proc) and RSS idle and under load.

    python bench/frontdoor.py [--duration 15 --rounds 1 --processes 1,2]
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from common import (
    NO_FAIR_USE_LIMITS,
    REPO,
    Procs,
    Unavailable,
    cpu_seconds,
    cpu_ticks,
    free_port,
    idle_percent,
    median,
    rss_mib,
    start_pods,
    steal_percent,
    wait_until,
    workspace,
)

EXPRESS_SRC = REPO / "bench" / "express"
BODY = '{"template": "weightless"}'
WRK_SCRIPT = f"""wrk.method = "POST"
wrk.body = '{BODY}'
wrk.headers["Content-Type"] = "application/json"
"""
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def ensure_wrk() -> str:
    """wrk (Debian package), installed with apt-get when missing."""
    if path := shutil.which("wrk"):
        return path
    sudo = [] if _is_root() else ["sudo"]
    print("frontdoor: installing wrk (apt-get install wrk)", file=sys.stderr)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "wrk"], check=False, capture_output=True)
    if not shutil.which("wrk"):
        subprocess.run([*sudo, "apt-get", "update", "-qq"], check=False, capture_output=True)
        subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "wrk"], check=False, capture_output=True)
    if path := shutil.which("wrk"):
        return path
    raise Unavailable("wrk is not installed and apt-get could not install it")


def _is_root() -> bool:
    import os

    return os.geteuid() == 0


def install_express(into: Path) -> Path:
    """Copy bench/express into `into` and npm install it there (npm's own cache makes reruns quick)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise Unavailable("node and npm are not installed")
    app = into / "express"
    shutil.copytree(EXPRESS_SRC, app, ignore=shutil.ignore_patterns("node_modules"))
    out = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=app,
                         capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise Unavailable(f"npm install of the Express + Bull app failed: {out.stderr[-1000:]}")
    return app


def parse_wrk(text: str) -> dict[str, Any]:
    def ms(value: str) -> float:
        m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
        if not m:
            raise ValueError(f"unexpected wrk latency {value!r}")
        return float(m.group(1)) * _UNITS[m.group(2)]

    latency = {int(p): ms(v) for p, v in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", text, re.M)}
    requests = re.search(r"(\d+) requests in", text)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if not (requests and rps and 50 in latency and 99 in latency):
        raise ValueError(f"could not read wrk's output:\n{text}")
    return {"requests": int(requests.group(1)), "rps": float(rps.group(1)), "p50_ms": latency[50],
            "p99_ms": latency[99], "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": sum(int(x) for x in errors.groups()) if errors else 0}


def redis_calls(port: int) -> dict[str, int]:
    """Commands Redis has executed so far, per command (INFO commandstats), to count commands per request."""
    out = subprocess.run(["redis-cli", "-p", str(port), "info", "commandstats"], capture_output=True, text=True,
                         timeout=30).stdout
    return {name: int(n) for name, n in re.findall(r"cmdstat_([\w|]+):calls=(\d+)", out)}


def result_requests(wrk_output: str) -> int:
    m = re.search(r"(\d+) requests in", wrk_output)
    return int(m.group(1)) if m else 0


class RssSampler(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop_flag = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self.stop_flag.wait(0.5):
            self.peak = max(self.peak, rss_mib(self.pid))


def _children_cpu() -> float:
    """CPU seconds of this process's reaped children (wrk, once subprocess.run has waited for it)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def one_run(kind: str, processes: int, procs: Procs, tmp: Path, app: Path, sim_url: str, wrk: str,
            duration: int, connections: int) -> dict[str, Any]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise Unavailable("redis-server is not installed")
    redis_port, port = free_port(), free_port()
    redis = procs.spawn(f"redis-{kind}{processes}", [binary, "--port", str(redis_port), "--bind", "127.0.0.1",
                                                     "--save", "", "--appendonly", "no", "--dir", str(tmp)])
    redis_url = f"redis://127.0.0.1:{redis_port}"
    wait_until(lambda: subprocess.run(["redis-cli", "-p", str(redis_port), "ping"], capture_output=True,
                                      text=True).stdout.strip() == "PONG", "redis-server", procs, timeout=30)
    url = f"http://127.0.0.1:{port}"
    if kind == "comfyfleet":
        env = {"COMFYFLEET_REDIS_URL": redis_url + "/0", "COMFYFLEET_AUTH_MODE": "none",
               "COMFYFLEET_COMFYUI_URLS": sim_url, "COMFYFLEET_DATA_DIR": str(tmp / "data"),
               "COMFYFLEET_LOG_LEVEL": "WARNING", "COMFYFLEET_HEALTH_INTERVAL_SECONDS": "2", **NO_FAIR_USE_LIMITS}
        server = procs.spawn(f"api{processes}", [sys.executable, "-m", "comfyfleet", "api", "--host", "127.0.0.1",
                                                 "--port", str(port), "--workers", str(processes)], env)

        def ready() -> bool:
            return int(httpx.get(f"{url}/health/detailed", timeout=5).json()["workers"]["ready"]) >= 1

        wait_until(ready, "comfyfleet api with a ready pod", procs, timeout=120)
        # Every worker process must have its catalog: probe each until a validated request passes on all.
        for _ in range(4 * processes):
            r = httpx.post(f"{url}/api/comfyui/generate", json=json.loads(BODY), timeout=30)
            if r.status_code != 202:
                raise RuntimeError(f"comfyfleet answered {r.status_code}: {r.text[:300]}")
    else:
        server = procs.spawn(f"express{processes}", ["node", str(app / "server.js")],
                             {"REDIS_URL": redis_url, "PORT": str(port), "WORKERS": str(processes)})

        def ready() -> bool:
            return httpx.post(f"{url}/api/comfyui/generate", json=json.loads(BODY), timeout=5).status_code == 202

        wait_until(ready, "the Express + Bull app", procs, timeout=60)
    time.sleep(1)
    idle_rss = rss_mib(server.pid)
    script = tmp / "post.lua"
    script.write_text(WRK_SCRIPT)
    # 2 s unmeasured first: connections, JIT (node), caches, Bull's lazily created Redis clients.
    subprocess.run([wrk, "-t2", f"-c{connections}", "-d2s", "-s", str(script), f"{url}/api/comfyui/generate"],
                   capture_output=True, timeout=120)
    sampler = RssSampler(server.pid)
    calls0 = redis_calls(redis_port)
    cpu0, redis_cpu0 = cpu_seconds(server.pid), cpu_seconds(redis.pid)
    ticks0, wrk0 = cpu_ticks(), _children_cpu()
    sampler.start()
    out = subprocess.run([wrk, "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script),
                          f"{url}/api/comfyui/generate"], capture_output=True, text=True, timeout=duration + 120)
    sampler.stop_flag.set()
    sampler.join()
    cpu, redis_cpu = cpu_seconds(server.pid) - cpu0, cpu_seconds(redis.pid) - redis_cpu0
    ticks1, wrk_cpu = cpu_ticks(), _children_cpu() - wrk0
    calls1 = redis_calls(redis_port)
    per_cmd = {k: (v - calls0.get(k, 0)) / max(1, result_requests(out.stdout)) for k, v in calls1.items()}
    per_cmd["info"] = per_cmd.get("info", 0.0) - 1 / max(1, result_requests(out.stdout))  # the INFO itself
    calls = sum(per_cmd.values())
    result = parse_wrk(out.stdout)
    procs.stop_one(server)
    procs.stop_one(redis)
    return {"kind": kind, "processes": processes, **result, "idle_rss_mib": idle_rss, "load_rss_mib": sampler.peak,
            "cpu_ms_per_req": cpu / max(1, result["requests"]) * 1000,
            "redis_cpu_ms_per_req": redis_cpu / max(1, result["requests"]) * 1000,
            "wrk_cpu_ms_per_req": wrk_cpu / max(1, result["requests"]) * 1000,
            # CPU time of the whole machine no process used, or the hypervisor took: with the server, Redis and
            # wrk sharing the cores, idle time means the server waited rather than ran out of CPU
            "idle_percent": idle_percent(ticks0, ticks1), "steal_percent": steal_percent(ticks0, ticks1),
            # background traffic (health monitor, Bull's timers, event hub) is counted too: small at these rates
            "redis_cmds_per_req": calls,
            "redis_top_cmds_per_req": dict(sorted(((k, round(v, 2)) for k, v in per_cmd.items() if v >= 0.05),
                                                  key=lambda kv: -kv[1])[:12])}


def run(duration: int = 15, rounds: int = 1, processes: tuple[int, ...] = (1, 2), connections: int = 64,
        keep: Path | None = None, servers: tuple[str, ...] = ("comfyfleet", "express")) -> dict[str, Any]:
    wrk = ensure_wrk()
    runs: list[dict[str, Any]] = []
    with workspace("frontdoor", keep) as (tmp, procs), tempfile.TemporaryDirectory(prefix="comfyfleet-npm-") as npm:
        app = install_express(Path(npm)) if "express" in servers else Path(npm)
        pods = start_pods(procs, tmp, 1)
        order = 0
        for _ in range(rounds):
            for n in processes:
                kinds = ("comfyfleet", "express") if order % 2 == 0 else ("express", "comfyfleet")
                order += 1
                for kind in kinds:
                    if kind in servers:
                        runs.append(one_run(kind, n, procs, tmp, app, pods.urls[0], wrk, duration, connections))
    if "express" not in servers or "comfyfleet" not in servers:  # one side only (quick A/B of one server)
        return {"duration_s": duration, "connections": connections, "rounds": rounds, "runs": runs, "summary": {}}
    summary = {}
    for n in processes:
        cf = [r for r in runs if r["kind"] == "comfyfleet" and r["processes"] == n]
        ex = [r for r in runs if r["kind"] == "express" and r["processes"] == n]
        summary[n] = {
            "comfyfleet_rps": median([r["rps"] for r in cf]), "express_rps": median([r["rps"] for r in ex]),
            "comfyfleet_p50_ms": median([r["p50_ms"] for r in cf]), "express_p50_ms": median([r["p50_ms"] for r in ex]),
            "comfyfleet_p99_ms": median([r["p99_ms"] for r in cf]), "express_p99_ms": median([r["p99_ms"] for r in ex]),
            "comfyfleet_cpu_ms_per_req": median([r["cpu_ms_per_req"] for r in cf]),
            "express_cpu_ms_per_req": median([r["cpu_ms_per_req"] for r in ex]),
            "comfyfleet_idle_percent": median([r["idle_percent"] for r in cf]),
            "express_idle_percent": median([r["idle_percent"] for r in ex]),
        }
        summary[n]["ratio"] = summary[n]["comfyfleet_rps"] / summary[n]["express_rps"]
    return {"duration_s": duration, "connections": connections, "rounds": rounds, "runs": runs,
            "summary": {str(k): v for k, v in summary.items()}}


def report(r: dict[str, Any]) -> str:
    lines = [f"{x['kind']} x{x['processes']}: {x['rps']:.0f} req/s (p50 {x['p50_ms']:.1f} ms, "
             f"p99 {x['p99_ms']:.1f} ms, {x['cpu_ms_per_req']:.2f} ms CPU/req, "
             f"{x['redis_cmds_per_req']:.1f} Redis commands/req, machine {x['idle_percent']:.0f} % idle)"
             for x in r["runs"]] if not r["summary"] else []
    for n, s in r["summary"].items():
        lines.append(
            f"{n} process(es): comfyfleet {s['comfyfleet_rps']:.0f} req/s (p50 {s['comfyfleet_p50_ms']:.1f} ms, "
            f"p99 {s['comfyfleet_p99_ms']:.1f} ms, {s['comfyfleet_cpu_ms_per_req']:.2f} ms CPU/req, "
            f"{s['comfyfleet_idle_percent']:.0f} % idle) vs Express + Bull {s['express_rps']:.0f} req/s (p50 "
            f"{s['express_p50_ms']:.1f} ms, p99 {s['express_p99_ms']:.1f} ms, {s['express_cpu_ms_per_req']:.2f} ms "
            f"CPU/req, {s['express_idle_percent']:.0f} % idle): {s['ratio']:.2f}x (goal >= 1.0)")
    bad = [x for x in r["runs"] if x["non_2xx"] or x["socket_errors"]]
    for x in bad:
        lines.append(f"  note: {x['kind']} x{x['processes']}: {x['non_2xx']} non-2xx, "
                     f"{x['socket_errors']} socket errors")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--keep", type=Path)
    parser.add_argument("--servers", default="comfyfleet,express",
                        help="comma list; one of them alone measures that side only (no ratio)")
    args = parser.parse_args()
    r = run(args.duration, args.rounds, tuple(int(x) for x in args.processes.split(",")), args.connections, args.keep,
            tuple(args.servers.split(",")))
    print(report(r))
    print(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
