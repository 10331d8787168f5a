"""What every benchmark shares: child processes, /proc figures, a local stack, simulated pods, submitting jobs.

Benchmarks measure and print; they assert nothing about speed. Each one starts its own redis-server,
simulators, API and dispatchers on free ports with a fresh Redis key prefix, and stops them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import httpx

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
FINAL = ("succeeded", "failed", "cancelled")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank: no interpolation between two samples."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# --- /proc -------------------------------------------------------------------------------------------
def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def process_tree(pid: int) -> list[int]:
    """pid and its live descendants (uvicorn workers, multiprocessing helpers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) and fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [pid], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process tree, plus what its reaped children used (cutime + cstime)."""
    ticks = 0
    for p in process_tree(pid):
        if fields := _stat(p):
            ticks += sum(int(x) for x in fields[11:15])
    return ticks / CLK_TCK


def rss_mib(pid: int) -> float:
    """Resident memory of a process tree in MiB (RSS counts shared pages in each process)."""
    return sum(int(f[21]) * PAGE for p in process_tree(pid) if (f := _stat(p))) / 2**20


def machine() -> dict[str, Any]:
    cpu_model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "unknown")
    mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal"))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                           text=True)
    return {
        "nproc": os.cpu_count(), "cpu_model": cpu_model, "memory_gib": round(mem_kib / 2**20, 1),
        "commit": (commit.stdout.strip() or "unknown") + (" (with local changes)" if dirty.stdout.strip() else ""),
        "date": datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"), "python": sys.version.split()[0],
    }


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class CpuTicks(NamedTuple):
    """Clock ticks of all CPUs since boot, from /proc/stat: steal is time a virtual machine's CPUs were ready
    to run but the hypervisor ran something else; idle counts iowait too."""

    steal: int
    total: int
    idle: int = 0


def cpu_ticks() -> CpuTicks:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    fields += [0] * (8 - len(fields))
    # guest time is counted inside user time already
    return CpuTicks(steal=fields[7], total=sum(fields[:8]), idle=fields[3] + fields[4])


def _share(part: int, total: int) -> float:
    return 100.0 * part / total if total > 0 else 0.0


def steal_percent(start: CpuTicks, end: CpuTicks) -> float:
    """The share of CPU time stolen by the hypervisor between two cpu_ticks() readings (pure)."""
    return _share(end.steal - start.steal, end.total - start.total)


def idle_percent(start: CpuTicks, end: CpuTicks) -> float:
    """The share of CPU time no process used between two cpu_ticks() readings (pure)."""
    return _share(end.idle - start.idle, end.total - start.total)


# --- processes ---------------------------------------------------------------------------------------
@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid


@dataclass
class Procs:
    """Children, each in its own process group; stopped together (SIGTERM, then SIGKILL after a grace)."""

    logs: Path
    children: list[Proc] = field(default_factory=list)

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Proc:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
                                     env={**os.environ, **(env or {})})
        proc = Proc(name, popen, log)
        self.children.append(proc)
        return proc

    def check(self) -> None:
        for p in self.children:
            if p.popen.poll() is not None:
                tail = p.log.read_text(errors="replace")[-2000:] if p.log.exists() else ""
                raise RuntimeError(f"{p.name} exited with {p.popen.returncode}; log {p.log}:\n{tail}")

    def stop_one(self, proc: Proc, sig: int = signal.SIGTERM, grace: float = 15.0) -> None:
        if proc.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.popen.wait()
        if proc in self.children:
            self.children.remove(proc)

    def stop(self) -> None:
        for p in reversed(self.children):
            if p.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in reversed(self.children):
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.popen.wait()
        self.children.clear()


def wait_until(condition: Callable[[], Any], what: str, procs: Procs, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs.check()
        try:
            if value := condition():
                return value
        except (httpx.HTTPError, OSError, KeyError, ValueError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}; logs in {procs.logs}")


# --- simulated pods ----------------------------------------------------------------------------------
# The simulator command; BENCH_SIM_COMMAND runs another build of it (e.g. a branch's checkout:
# "env PYTHONPATH=/path/to/checkout /path/to/python -m comfyfleet sim") while everything else stays this one.
SIM_COMMAND = shlex.split(os.environ.get("BENCH_SIM_COMMAND", "")) or [sys.executable, "-m", "comfyfleet", "sim"]
_MULTI_POD: bool | None = None


def multi_pod_sim() -> bool:
    """Whether `comfyfleet sim` can host many pods in one process (`--count`, the sim branch's feature)."""
    global _MULTI_POD
    if _MULTI_POD is None:
        out = subprocess.run([*SIM_COMMAND, "--help"], cwd=REPO, capture_output=True,
                             text=True, timeout=120)
        _MULTI_POD = "--count" in out.stdout and "--urls-file" in out.stdout
    return _MULTI_POD


@dataclass
class Pods:
    urls: list[str]
    procs: list[Proc]  # one per single-pod simulator, or the one process hosting them all

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]


def start_pods(procs: Procs, tmp: Path, count: int, step_seconds: float | None = None, *,
               single_process_limit: int = 32) -> Pods:
    """`count` simulated ComfyUI pods: in one process when the simulator can, else one process each (up to
    single_process_limit: more would not fit on 2 cores)."""
    # --cache-none: every prompt runs all its nodes. With ComfyUI's output cache an identical graph (the same
    # trivial job again and again) would be answered from the cache with the files of an earlier prompt,
    # files the dispatcher has already deleted from the pod after storing them (see BENCHMARKS.md notes).
    knobs = ["--log-level", "WARNING", "--cache-none"] + (["--step-seconds", str(step_seconds)] if step_seconds else [])
    if count > 1 and multi_pod_sim():
        urls_file = tmp / "sim-urls.txt"
        proc = procs.spawn("sim", [*SIM_COMMAND, "--port", "0", "--count", str(count),
                                   "--urls-file", str(urls_file),
                                   "--data-dir", str(tmp / "sim"), *knobs])
        wait_until(lambda: urls_file.exists() and len(urls_file.read_text().split()) == count,
                   f"{count} pods in one simulator", procs, timeout=300)
        return Pods(urls_file.read_text().split(), [proc])
    if count > single_process_limit:
        raise Unavailable(f"{count} pods need the multi-pod simulator (`comfyfleet sim --count`), not in this "
                          "checkout yet; one process per pod does not fit on this machine")
    pods = Pods([], [])
    for i in range(count):
        port = free_port()
        pods.procs.append(procs.spawn(f"sim-{i}", [*SIM_COMMAND, "--listen", "127.0.0.1", "--port", str(port),
                                                   "--data-dir", str(tmp / f"sim-{i}"), *knobs]))
        pods.urls.append(f"http://127.0.0.1:{port}")
    for url in pods.urls:
        wait_until(lambda u=url: httpx.get(f"{u}/system_stats", timeout=2).status_code == 200,  # type: ignore[misc]
                   f"simulator {url}", procs, timeout=120)
    return pods


class Unavailable(RuntimeError):
    """A benchmark that cannot run in this checkout (says why); run.py reports it as not run."""


# Fair-use limits (per-user in-flight jobs, submissions per minute, queue depth) are checked as in production
# but set so high they never trip: every benchmark submits as one user, far beyond what one user may.
NO_FAIR_USE_LIMITS = {
    "COMFYFLEET_MAX_JOBS_IN_FLIGHT_PER_USER": "1000000000",
    "COMFYFLEET_MAX_SUBMISSIONS_PER_MINUTE_PER_USER": "1000000000",
    "COMFYFLEET_MAX_QUEUE_DEPTH": "1000000000",
    "COMFYFLEET_MAX_QUEUE_DEPTH_PER_POOL": "1000000000",
}


# --- the stack ---------------------------------------------------------------------------------------
@dataclass
class Stack:
    """redis-server + `comfyfleet api` + dispatchers over given pods, fresh key prefix, auth off (loopback)."""

    procs: Procs
    tmp: Path
    urls: list[str]
    redis: Proc | None = None
    api: Proc | None = None
    dispatchers: list[Proc] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    api_url: str = ""

    def start(self, *, dispatchers: int = 1, api_workers: int = 1, health_interval: float | None = None,
              extra_env: dict[str, str] | None = None, dispatcher_prefix: list[str] | None = None) -> Stack:
        binary = shutil.which("redis-server")
        if binary is None:
            raise Unavailable("redis-server is not installed (scripts/bootstrap)")
        redis_port, api_port = free_port(), free_port()
        self.redis = self.procs.spawn("redis", [binary, "--port", str(redis_port), "--bind", "127.0.0.1",
                                                "--save", "", "--appendonly", "no", "--dir", str(self.tmp)])
        self.env = {
            "COMFYFLEET_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "COMFYFLEET_REDIS_PREFIX": "bench" + uuid.uuid4().hex[:6],
            "COMFYFLEET_DATA_DIR": str(self.tmp / "data"),
            "COMFYFLEET_COMFYUI_URLS": ",".join(self.urls),
            "COMFYFLEET_AUTH_MODE": "none",
            "COMFYFLEET_HOST": "127.0.0.1",
            "COMFYFLEET_PORT": str(api_port),
            # The API's health monitor probes every pod each interval: the production default (5 s) unless
            # told otherwise (`comfyfleet up` uses 1 s, which with 200 pods is 200 probes a second).
            **({"COMFYFLEET_HEALTH_INTERVAL_SECONDS": str(health_interval)} if health_interval else {}),
            "COMFYFLEET_LOG_LEVEL": "WARNING",
            **NO_FAIR_USE_LIMITS,
            **(extra_env or {}),
        }
        self.api_url = f"http://127.0.0.1:{api_port}"
        self.api = self.procs.spawn("api", [sys.executable, "-m", "comfyfleet", "api", "--workers", str(api_workers)],
                                    self.env)
        for _ in range(dispatchers):
            self.add_dispatcher(prefix=dispatcher_prefix)
        return self

    def add_dispatcher(self, prefix: list[str] | None = None, name: str | None = None) -> Proc:
        """`comfyfleet dispatcher`, optionally under a wrapper (prefix: e.g. pyinstrument's command line)."""
        args = [*(prefix or [sys.executable, "-m"]), "comfyfleet", "dispatcher", "--port", "0"]
        proc = self.procs.spawn(name or f"dispatcher-{len(self.dispatchers)}", args, self.env)
        self.dispatchers.append(proc)
        return proc

    def wait_ready(self, pods: int | None = None, timeout: float = 180) -> None:
        want = len(self.urls) if pods is None else pods

        def ready() -> bool:
            body = httpx.get(f"{self.api_url}/health/detailed", timeout=5).json()
            return int(body["workers"]["ready"]) >= want

        wait_until(ready, f"the API to see {want} ready pods", self.procs, timeout=timeout)

    def control_plane(self) -> dict[str, int]:
        """name -> pid of the API, each dispatcher and Redis (the parts whose CPU a job costs)."""
        parts = {"api": self.api, "redis": self.redis} | {p.name: p for p in self.dispatchers}
        return {name: p.pid for name, p in parts.items() if p is not None}


@contextlib.contextmanager
def workspace(name: str, keep: Path | None = None) -> Iterator[tuple[Path, Procs]]:
    """A temporary folder and a process set, cleaned up (processes stopped) whatever happens."""
    import tempfile

    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        tmp_ctx: contextlib.AbstractContextManager[str] = contextlib.nullcontext(str(keep))
    else:
        tmp_ctx = tempfile.TemporaryDirectory(prefix=f"comfyfleet-bench-{name}-")
    with tmp_ctx as tmp_name:
        tmp = Path(tmp_name)
        procs = Procs(tmp / "logs")
        try:
            yield tmp, procs
        finally:
            procs.stop()


# --- jobs --------------------------------------------------------------------------------------------
def txt2img(seed: int, steps: int) -> dict[str, Any]:
    # 64x64: the smallest image, so the simulator's rendering and the output store cost the least CPU.
    return {"template": "txt2img", "params": {"seed": seed, "steps": steps, "width": 64, "height": 64}}


async def submit_many(api_url: str, bodies: list[dict[str, Any]], concurrency: int = 16) -> tuple[float, list[str]]:
    """POST every body (at most `concurrency` at once); (wall-clock time of the first POST, job ids in order).
    The client's keep-alive connections are opened before the clock starts, as an app's pool would be: the
    time measured from the first POST is the API's and dispatch's, not this client's TCP handshakes."""
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=api_url, timeout=120, limits=limits) as client:
        await asyncio.gather(*(client.get("/health") for _ in range(concurrency)))

        async def one(body: dict[str, Any]) -> str:
            async with sem:
                r = await client.post("/api/comfyui/generate", json=body)
                r.raise_for_status()
                return str(r.json()["jobId"])

        t0 = time.time()
        ids = await asyncio.gather(*(one(b) for b in bodies))
    return t0, list(ids)


def queue_stats(api_url: str) -> dict[str, Any]:
    return dict(httpx.get(f"{api_url}/api/queue/stats", timeout=30).json())


def finished(stats: dict[str, Any]) -> int:
    return int(stats["completed"] + stats["failed"] + stats["cancelled"])


def wait_finished(api_url: str, target: int, procs: Procs, timeout: float, interval: float = 0.5,
                  sample: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Poll the queue counters until `target` jobs have ended (sample(stats) at every poll)."""
    deadline = time.monotonic() + timeout
    while True:
        procs.check()
        stats = queue_stats(api_url)
        if sample is not None:
            sample(stats)
        if finished(stats) >= target:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{target - finished(stats)} jobs not final after {timeout:.0f} s: {stats}")
        time.sleep(interval)


def get_jobs(api_url: str, ids: list[str], concurrency: int = 16) -> list[dict[str, Any]]:
    """The job records, in the order of ids (read after the measurement, so the load is not counted)."""

    async def fetch() -> list[dict[str, Any]]:
        sem = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(base_url=api_url, timeout=60) as client:

            async def one(job_id: str) -> dict[str, Any]:
                async with sem:
                    return dict((await client.get(f"/api/comfyui/job/{job_id}")).json())

            return list(await asyncio.gather(*(one(i) for i in ids)))

    return asyncio.run(fetch())


def ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None
