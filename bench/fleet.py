"""Fleet efficiency: how busy N simulated pods are kept when comfyfleet dispatches 10 jobs per pod.

N pods in ONE simulator process (`comfyfleet sim --count N`), each job a txt2img of STEPS sampler steps
of STEP_SECONDS (job time T = STEPS x STEP_SECONDS, about 1 s by default), JOBS_PER_POD x N jobs posted
at once through the API of a local stack (redis-server, `comfyfleet api`, the dispatch command below).
Prints figures, asserts nothing:

- busy fraction = ideal / makespan, ideal = JOBS_PER_POD x T (each pod back to back, zero dispatch
  cost), makespan = first submit -> last job final (the job records' finishedAt);
- per-pod first-job start latency (first submit -> the pod's first job startedAt), min/p50/max, and
  how many pods never got a job;
- CPU seconds (from /proc, whole process trees) of the API, the dispatch processes, Redis and the
  simulator over the run, and per job; the dispatch tree's peak RSS.

`--direct` measures the simulator alone instead: a minimal client per pod (websocket, POST /prompt,
wait for the end) runs the same jobs back to back, so the figures show what the simulator itself
allows on this machine. `--keep-pod-history` keeps the pods' /history (the dispatcher deletes finished
entries by default), so the pods' own execution time and busy fraction can be printed.

    python bench/fleet.py --pods 4 --job-seconds 0.5          # a quick check
    python bench/fleet.py --pods 32 && python bench/fleet.py --pods 200 --direct
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx

REPO = Path(__file__).resolve().parents[1]

# The dispatch side under test, run as `python -m comfyfleet <args>` ({pods} becomes the number of pods):
# the ONE line to change to compare set-ups, e.g. the old fork-per-job pool was
#     ["worker", "--concurrency", "{pods}"]   (now a deprecated alias of `dispatcher`)
DISPATCH_ARGS = ["dispatcher"]

FINAL = ("succeeded", "failed", "cancelled")
# Simultaneous submits: enough to post 2000 jobs quickly without a connection per job.
SUBMIT_CONCURRENCY = 16


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- processes -------------------------------------------------------------------------------------
@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


@dataclass
class Procs:
    """Child processes, each in its own process group, stopped together (SIGTERM, then SIGKILL)."""

    logs: Path
    children: list[Proc] = field(default_factory=list)

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Proc:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
                                     env={**os.environ, **(env or {})})  # fmt: skip
        proc = Proc(name, popen, log)
        self.children.append(proc)
        return proc

    def check(self) -> None:
        for p in self.children:
            if p.popen.poll() is not None:
                raise RuntimeError(f"{p.name} exited with {p.popen.returncode}; log: {p.log}")

    def stop(self) -> None:
        for p in reversed(self.children):
            if p.popen.poll() is None:
                os.killpg(p.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in reversed(self.children):
            try:
                p.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(p.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.children.clear()


def wait_until(condition: Any, what: str, procs: Procs, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs.check()
        try:
            value = condition()
            if value:
                return value
        except (httpx.HTTPError, OSError, KeyError, ValueError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {what}; logs in {procs.logs}")


# --- /proc ---------------------------------------------------------------------------------------
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def tree(pid: int) -> list[int]:
    """pid and its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))):
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [pid], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cpu_seconds(pid: int) -> float:
    """CPU of a process tree: every live member's own time plus what its reaped children used."""
    total = 0
    for p in tree(pid):
        if fields := _stat(p):
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / CLK_TCK


def rss_bytes(pid: int) -> int:
    return sum(int(f[21]) * PAGE for p in tree(pid) if (f := _stat(p)))


# --- the simulator -----------------------------------------------------------------------------------
def start_sim(procs: Procs, tmp: Path, pods: int, step_seconds: float) -> tuple[Proc, list[str]]:
    urls_file = tmp / "sim-urls.txt"
    proc = procs.spawn("sim", [sys.executable, "-m", "comfyfleet", "sim", "--port", "0", "--count", str(pods),
                               "--step-seconds", str(step_seconds), "--urls-file", str(urls_file),
                               "--data-dir", str(tmp / "sim"), "--log-level", "WARNING"])  # fmt: skip
    wait_until(urls_file.exists, "the simulator's URL list", procs)
    return proc, urls_file.read_text().split()


def txt2img_params(seed: int, steps: int) -> dict[str, Any]:
    # 64x64: the smallest image, so rendering and storing outputs cost the least CPU per job.
    return {"seed": seed, "steps": steps, "width": 64, "height": 64}


# --- through comfyfleet ------------------------------------------------------------------------------
def start_stack(procs: Procs, tmp: Path, urls: list[str], keep_pod_history: bool) -> tuple[str, dict[str, Proc]]:
    redis_port, api_port = free_port(), free_port()
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed")
    redis = procs.spawn("redis", [binary, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no", "--dir", str(tmp)])  # fmt: skip
    env = {
        "COMFYFLEET_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "COMFYFLEET_REDIS_PREFIX": "bench" + uuid.uuid4().hex[:6],
        "COMFYFLEET_DATA_DIR": str(tmp / "data"),
        "COMFYFLEET_COMFYUI_URLS": ",".join(urls),
        "COMFYFLEET_AUTH_MODE": "none",
        "COMFYFLEET_HOST": "127.0.0.1",
        "COMFYFLEET_PORT": str(api_port),
        "COMFYFLEET_HEALTH_INTERVAL_SECONDS": "1",
        "COMFYFLEET_LOG_LEVEL": "WARNING",
        # No /healthz listener: several dispatch processes (or other stacks on this host) would share its port.
        "COMFYFLEET_DISPATCHER_PORT": "0",
        # The pods' /history gives their own execution time; the dispatcher deletes entries unless told not to.
        "COMFYFLEET_DELETE_POD_HISTORY": "false" if keep_pod_history else "true",
    }
    api_url = f"http://127.0.0.1:{api_port}"
    api = procs.spawn("api", [sys.executable, "-m", "comfyfleet", "api"], env)
    dispatch_args = [a.replace("{pods}", str(len(urls))) for a in DISPATCH_ARGS]
    dispatch = procs.spawn("dispatch", [sys.executable, "-m", "comfyfleet", *dispatch_args], env)

    def all_pods_ready() -> bool:
        body = httpx.get(f"{api_url}/health/detailed", timeout=5).json()
        return body["workers"]["ready"] >= len(urls)

    wait_until(all_pods_ready, f"the API to see {len(urls)} ready pods", procs, timeout=180)
    return api_url, {"api": api, "dispatch": dispatch, "redis": redis}


async def submit_all(api_url: str, jobs: int, steps: int, seed0: int = 100_000) -> tuple[float, list[str]]:
    """Post every job; returns (wall-clock time of the first submit, job ids). The client's keep-alive
    connections are opened before the clock starts, as an app's pool would be: the makespan times dispatch,
    not this client's TCP handshakes."""
    sem = asyncio.Semaphore(SUBMIT_CONCURRENCY)
    limits = httpx.Limits(max_connections=SUBMIT_CONCURRENCY, max_keepalive_connections=SUBMIT_CONCURRENCY)
    async with httpx.AsyncClient(base_url=api_url, timeout=60, limits=limits) as client:
        await asyncio.gather(*(client.get("/health") for _ in range(SUBMIT_CONCURRENCY)))

        async def one(i: int) -> str:
            async with sem:
                body = {"template": "txt2img", "params": txt2img_params(seed0 + i, steps)}
                r = await client.post("/api/comfyui/generate", json=body)
                r.raise_for_status()
                return str(r.json()["jobId"])

        t0 = time.time()
        ids = await asyncio.gather(*(one(i) for i in range(jobs)))
    return t0, list(ids)


def pod_runs(urls: list[str], only: set[str] | None = None) -> dict[str, list[tuple[float, float]]]:
    """Each pod's finished prompts as (execution_start, end) in seconds, in order, as the pods' /history
    records them (empty when the dispatcher deletes history entries after storing outputs); `only` these
    prompt ids if given."""
    runs: dict[str, list[tuple[float, float]]] = {}
    with httpx.Client(timeout=30) as client:
        for url in urls:
            for prompt_id, entry in client.get(f"{url}/history").json().items():
                if only is not None and prompt_id not in only:
                    continue
                stamps = {name: data.get("timestamp") for name, data in entry["status"]["messages"]}
                end = stamps.get("execution_success") or stamps.get("execution_error")
                if stamps.get("execution_start") and end:
                    runs.setdefault(url, []).append((stamps["execution_start"] / 1000, end / 1000))
    return {url: sorted(r) for url, r in runs.items()}


def pod_execution_seconds(urls: list[str], only: set[str] | None = None) -> list[float]:
    """Each finished prompt's execution_start -> end on its pod (see pod_runs)."""
    return [end - start for r in pod_runs(urls, only).values() for start, end in r]


def pod_idle_gaps(urls: list[str], only: set[str] | None = None) -> list[float]:
    """On each pod, one prompt's end -> the next prompt's start: the time dispatch kept the pod waiting."""
    return [b[0] - a[1] for r in pod_runs(urls, only).values() for a, b in zip(r, r[1:], strict=False)]


def print_idle_gaps(urls: list[str], only: set[str] | None = None) -> None:
    if gaps := sorted(pod_idle_gaps(urls, only)):
        print(f"  pod idle between prompts (/history): p50 {1000 * statistics.median(gaps):.1f} ms, "
              f"p95 {1000 * gaps[int(0.95 * (len(gaps) - 1))]:.1f} ms, max {1000 * gaps[-1]:.1f} ms over {len(gaps)}")


def _ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


def finished_count(client: httpx.Client) -> int:
    stats = client.get("/api/queue/stats").json()
    return int(stats["completed"] + stats["failed"] + stats["cancelled"])


def wait_finished(client: httpx.Client, target: int, procs: Procs, timeout: float,
                  sample: Any = None) -> None:  # fmt: skip
    """Poll the queue counters until `target` jobs have ended; sample() runs at every poll."""
    deadline = time.monotonic() + timeout
    while (done := finished_count(client)) < target:
        procs.check()
        if sample is not None:
            sample()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{target - done} jobs still not final after {timeout:.0f} s")
        time.sleep(0.25)


def warm_up(api_url: str, pods: int, steps: int, procs: Procs, rounds: int = 5) -> None:
    """Rounds of one job per pod until a round's jobs all ran at once (every start before the first end):
    then every dispatch process is up and every pod has been reached, and the clock can start."""
    with httpx.Client(base_url=api_url, timeout=60) as client:
        for r in range(rounds):
            before = finished_count(client)
            started = time.monotonic()
            _, ids = asyncio.run(submit_all(api_url, pods, steps, seed0=900_000 + r * pods))
            wait_finished(client, before + pods, procs, timeout=300)
            jobs = [client.get(f"/api/comfyui/job/{i}").json() for i in ids]
            starts = [_ts(j["startedAt"]) or 0.0 for j in jobs]
            ends = [_ts(j["finishedAt"]) or 0.0 for j in jobs]
            if max(starts) < min(ends):
                print(f"  warm-up: {r + 1} round(s) of {pods} jobs, {time.monotonic() - started:.1f} s for the last")
                return
        print(f"  warm-up: {rounds} rounds and never {pods} jobs at once; measuring anyway")


def run_through_stack(args: argparse.Namespace, tmp: Path, procs: Procs) -> None:
    sim, urls = start_sim(procs, tmp, args.pods, args.step_seconds)
    api_url, members = start_stack(procs, tmp, urls, args.keep_pod_history)
    members["sim"] = sim
    if args.warmup:
        warm_up(api_url, args.pods, args.steps, procs)
    total = args.pods * args.jobs_per_pod
    peak_rss = 0

    def sample_rss() -> None:
        nonlocal peak_rss
        peak_rss = max(peak_rss, rss_bytes(members["dispatch"].popen.pid))

    with httpx.Client(base_url=api_url, timeout=30) as client:
        before = finished_count(client)
        cpu_before = {name: cpu_seconds(p.popen.pid) for name, p in members.items()}
        t0, ids = asyncio.run(submit_all(api_url, total, args.steps))
        submitted = time.time()
        wait_finished(client, before + total, procs, args.jobs_per_pod * args.job_seconds * 20 + 300, sample_rss)
        cpu = {name: cpu_seconds(p.popen.pid) - cpu_before[name] for name, p in members.items()}
        jobs = [client.get(f"/api/comfyui/job/{i}").json() for i in ids]
    states = {s: sum(j["state"] == s for j in jobs) for s in FINAL}
    finished = [t for j in jobs if (t := _ts(j["finishedAt"]))]
    makespan = max(finished) - t0
    first_start: dict[str, float] = {}
    for j in jobs:
        started, pod = _ts(j["startedAt"]), (j["worker"] or "").removeprefix("url:")
        if started is not None and pod:
            first_start[pod] = min(first_start.get(pod, started), started)
    latencies = sorted(s - t0 for s in first_start.values())
    # comfyfleet posts each job's prompt under the job id, so the pods' history tells measured jobs apart.
    executed = pod_execution_seconds(urls, set(ids))
    ideal = args.jobs_per_pod * args.job_seconds
    dispatch = " ".join(a.replace("{pods}", str(args.pods)) for a in DISPATCH_ARGS)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{args.pods} pods x {args.jobs_per_pod} jobs of T = {args.steps} x {args.step_seconds:.3f} s "
          f"= {args.job_seconds:.2f} s, dispatch `comfyfleet {dispatch}`:")  # fmt: skip
    print(f"  jobs: {states}; submitting took {submitted - t0:.2f} s; pod execution per job (/history): "
          + (f"median {statistics.median(executed):.3f} s over {len(executed)}" if executed else "n/a (deleted)"))
    print(f"  makespan {makespan:.2f} s, ideal {ideal:.2f} s -> busy fraction {ideal / makespan:.3f}"
          + (f"; pods' own busy fraction (their execution time / N x makespan) "
             f"{sum(executed) / (args.pods * makespan):.3f}" if executed else ""))  # fmt: skip
    print_idle_gaps(urls, set(ids))
    if latencies:
        print(f"  first-job start latency per pod: min {latencies[0]:.2f} s, "
              f"p50 {statistics.median(latencies):.2f} s, max {latencies[-1]:.2f} s; "
              f"pods that ran nothing: {args.pods - len(latencies)}")  # fmt: skip
    print("  CPU over the run (s; ms per job): " + ", ".join(
        f"{name} {sec:.1f} ({sec / total * 1000:.0f})" for name, sec in cpu.items()))  # fmt: skip
    control = cpu["api"] + cpu["dispatch"] + cpu["redis"]
    print(f"  control plane (api + dispatch + redis): {control / total * 1000:.0f} ms CPU per job; "
          f"dispatch tree peak RSS {peak_rss / 2**20:.0f} MiB")  # fmt: skip


# --- straight to the simulator ----------------------------------------------------------------------
def workflow(seed: int, steps: int) -> dict[str, Any]:
    wf = json.loads((REPO / "examples" / "txt2img.json").read_text())
    wf["3"]["inputs"].update(seed=seed, steps=steps)
    wf["5"]["inputs"].update(width=64, height=64)
    return wf


async def pod_back_to_back(http: aiohttp.ClientSession, url: str, jobs: int, steps: int, seed0: int,
                           go: asyncio.Event, connected: list[str]) -> tuple[float, float]:  # fmt: skip
    """Connect, wait for `go`, then run jobs one after another on one pod; returns (first execution_start
    seen, last end), wall clock."""
    client_id = uuid.uuid4().hex
    first = last = 0.0
    async with http.ws_connect(f"{url}/ws?clientId={client_id}") as ws:
        async with http.get(url + "/prompt") as r:  # the HTTP connection is open before the clock starts
            await r.read()
        connected.append(url)
        await go.wait()
        for i in range(jobs):
            body = {"prompt": workflow(seed0 + i, steps), "client_id": client_id}
            async with http.post(url + "/prompt", json=body) as r:
                pid = (await r.json())["prompt_id"]
            while True:
                msg = await ws.receive()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        raise ConnectionError(f"{url}: websocket closed")
                    continue
                frame = json.loads(msg.data)
                if frame["type"] == "execution_start" and not first:
                    first = time.time()
                if frame["type"] == "executing" and frame["data"]["node"] is None:
                    if frame["data"].get("prompt_id") == pid:
                        last = time.time()
                        break
    return first, last


async def run_direct_async(urls: list[str], jobs: int, steps: int) -> tuple[float, list[tuple[float, float]]]:
    go, connected = asyncio.Event(), []
    # One aiohttp session for every pod (a keep-alive connection each): httpx took 3.8 s for 100
    # simultaneous POSTs to 100 pods where aiohttp took 0.9 s, so the client would be what is measured.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=120)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as http:
        tasks = [asyncio.create_task(pod_back_to_back(http, u, jobs, steps, 1000 * i, go, connected))
                 for i, u in enumerate(urls)]  # fmt: skip
        while len(connected) < len(urls):
            failed = [t for t in tasks if t.done()]
            if failed:
                await failed[0]  # raises what went wrong while connecting
            await asyncio.sleep(0.01)
        t0 = time.time()
        go.set()
        return t0, list(await asyncio.gather(*tasks))


def run_direct(args: argparse.Namespace, tmp: Path, procs: Procs) -> None:
    sim, urls = start_sim(procs, tmp, args.pods, args.step_seconds)
    before, client_before = cpu_seconds(sim.popen.pid), time.process_time()
    t0, spans = asyncio.run(run_direct_async(urls, args.jobs_per_pod, args.steps))
    sim_cpu, client_cpu = cpu_seconds(sim.popen.pid) - before, time.process_time() - client_before
    makespan = max(end for _, end in spans) - t0
    ideal = args.jobs_per_pod * args.job_seconds
    latencies = sorted(start - t0 for start, _ in spans)
    executed = pod_execution_seconds(urls)
    total = args.pods * args.jobs_per_pod
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{args.pods} pods x {args.jobs_per_pod} jobs of T = {args.steps} x {args.step_seconds:.3f} s "
          f"= {args.job_seconds:.2f} s, DIRECT to the simulator (no comfyfleet):")  # fmt: skip
    print(f"  makespan {makespan:.2f} s, ideal {ideal:.2f} s -> busy fraction {ideal / makespan:.3f}; "
          f"pod execution per job (/history) median {statistics.median(executed):.3f} s, max {max(executed):.3f} s")
    print_idle_gaps(urls)
    print(f"  first-job start latency per pod: min {latencies[0]:.2f} s, p50 {statistics.median(latencies):.2f} s, "
          f"max {latencies[-1]:.2f} s")  # fmt: skip
    print(f"  simulator CPU {sim_cpu:.1f} s ({sim_cpu / total * 1000:.0f} ms per job), "
          f"RSS {rss_bytes(sim.popen.pid) / 2**20:.0f} MiB; this client's CPU {client_cpu:.1f} s")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=4)
    parser.add_argument("--job-seconds", type=float, default=1.0, help="T, the pod's time per job")
    parser.add_argument("--steps", type=int, default=10, help="sampler steps per job (T / steps per step)")
    parser.add_argument("--jobs-per-pod", type=int, default=10)
    parser.add_argument("--direct", action="store_true", help="the simulator alone, no comfyfleet")
    parser.add_argument("--keep-pod-history", action="store_true",
                        help="tell the dispatcher to keep finished prompts in the pods' /history, for the pods' own "
                             "execution time and busy fraction (one request per job less than the default)")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false",
                        help="start the clock without first running one round of jobs per pod")
    parser.add_argument("--keep", type=Path, default=None, help="keep logs and data in this folder")
    args = parser.parse_args()
    args.step_seconds = args.job_seconds / args.steps
    # SIGTERM (e.g. from `timeout`) unwinds through the finally below, so no child outlives the bench.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as scratch:
        tmp = args.keep or Path(scratch)
        procs = Procs(tmp / "logs")
        try:
            (run_direct if args.direct else run_through_stack)(args, tmp, procs)
        finally:
            procs.stop()


if __name__ == "__main__":
    main()
