"""Operator scale: a ComfyUIWorker of REPLICAS pods -> every pod registered for dispatch, on the test control plane.

Starts the k8s tier's real etcd + kube-apiserver, Redis and `comfyfleet operator` (as the chart's
ServiceAccount; production probe interval 5 s and status refresh 2 s, the CRD's default probe settings), no
dispatch processes (jobs only queue), and the kubelet stand-in with every simulated pod hosted by one simulator
process (one loopback address per pod), so the stand-in is not what is measured. Then:

1. applies a ComfyUIWorker of REPLICAS replicas and times, from the apply, the moment all its pods exist,
   all are Ready (written by the kubelet stand-in) and all are registered and healthy in the dispatch
   registry (Redis), polling every POLL_SECONDS; samples the operator's RSS and CPU (/proc) meanwhile;
2. measures the operator at rest with the pool running (CPU over STEADY_SECONDS of 5 s probe rounds);
3. applies JOBS GenerationJobs one after another and times each from the create call to its job record
   in Redis (queued for dispatch) and to `status.phase: Queued` on the GenerationJob (what kubectl shows).

Prints the figures; asserts nothing about speed.

    python bench/operator_scale.py [--replicas 200] [--jobs 50] [--probe-interval 5]
    python bench/operator_scale.py --profile bench/results/profile-operator.txt   # pyinstrument, scale-up + jobs
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.k8s: the control plane harness

from common import REPO, Unavailable, cpu_seconds, loadavg, median, pct, rss_mib  # noqa: E402
from kubernetes.client import CoreV1Api, CustomObjectsApi  # noqa: E402

from comfyfleet.operator.job_spec import owner_for  # noqa: E402
from comfyfleet.operator.models import GROUP, JOB_PLURAL, VERSION, WORKER_PLURAL  # noqa: E402
from tests.k8s.conftest import NOBODY_IDENTITY, OPERATOR_IDENTITY  # noqa: E402
from tests.k8s.envtest import BIN_DIR_ENV, BINARIES_SCRIPT, ControlPlane, find_binaries  # noqa: E402
from tests.k8s.operator_harness import OperatorFleet, txt2img_job, worker_manifest  # noqa: E402

POLL_SECONDS = 0.25
JOB_POLL_SECONDS = 0.005
STEADY_SECONDS = 10.0
POOL = "scale"
# The CRD's defaults, spelled out: what a pool applied without a probe section gets.
PRODUCTION_PROBE = {"intervalSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 3}
SCALE_TIMEOUT_SECONDS = 300
# Where scripts/k8s-binaries caches what it builds (its default; COMFYFLEET_CACHE_DIR moves it).
K8S_CACHE = Path(os.environ.get("COMFYFLEET_CACHE_DIR") or Path.home() / ".cache" / "comfyfleet") / "bin"


def control_plane_binaries() -> Path:
    """etcd, kube-apiserver and kubectl, when built already; a cold build (~11 min) is not started from a benchmark."""
    if not os.environ.get(BIN_DIR_ENV) and not any(K8S_CACHE.glob("k8s-*-etcd-*")):
        raise Unavailable(f"the k8s test binaries are not built: run {BINARIES_SCRIPT.relative_to(REPO)} once "
                          "(~11 min on 2 cores), as for the k8s tests")
    return find_binaries()


class Sampler:
    """The operator's RSS (peak) and CPU seconds between two points, from /proc."""

    def __init__(self, pid: int):
        self.pid = pid
        self.cpu0 = cpu_seconds(pid)
        self.t0 = time.monotonic()
        self.peak_rss = rss_mib(pid)

    def sample(self) -> None:
        self.peak_rss = max(self.peak_rss, rss_mib(self.pid))

    def result(self) -> dict[str, float]:
        self.sample()
        cpu, wall = cpu_seconds(self.pid) - self.cpu0, time.monotonic() - self.t0
        return {"cpu_s": cpu, "wall_s": wall, "cpu_percent": cpu / wall * 100 if wall else 0.0,
                "peak_rss_mib": self.peak_rss, "rss_mib": rss_mib(self.pid)}


def scale_up(fleet: OperatorFleet, core: CoreV1Api, custom: CustomObjectsApi, namespace: str, replicas: int,
             pid: int) -> dict[str, Any]:
    """Apply the pool; seconds from the apply to all pods created, Ready and registered; operator RSS/CPU."""
    body = worker_manifest(POOL, replicas=replicas, probe=PRODUCTION_PROBE)
    sampler = Sampler(pid)
    started = time.monotonic()
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, WORKER_PLURAL, body)
    reached: dict[str, float] = {}
    timeline: list[tuple[float, int, int, int]] = []
    while "registered" not in reached:
        now = time.monotonic() - started
        if now > SCALE_TIMEOUT_SECONDS:
            raise RuntimeError(f"{replicas} pods not all registered after {SCALE_TIMEOUT_SECONDS} s "
                               f"(last: {timeline[-1:]})\n{fleet.logs()}")
        resp: Any = core.list_namespaced_pod(namespace, label_selector=f"comfyfleet.io/pool={POOL}",
                                             _preload_content=False)
        pods = json.loads(resp.data)["items"]
        ready = sum(1 for p in pods if any(c["type"] == "Ready" and c["status"] == "True"
                                           for c in (p.get("status") or {}).get("conditions") or []))
        registered = sum(1 for e in fleet.endpoints(namespace, POOL).values() if e.healthy)
        for what, count in (("created", len(pods)), ("ready", ready), ("registered", registered)):
            if count >= replicas and what not in reached:
                reached[what] = now
        if not timeline or timeline[-1][1:] != (len(pods), ready, registered):
            timeline.append((round(now, 2), len(pods), ready, registered))
        sampler.sample()
        time.sleep(POLL_SECONDS)
    return {"seconds": reached, "operator": sampler.result(), "timeline": timeline}


def steady(pid: int, seconds: float) -> dict[str, float]:
    """The operator's CPU and RSS over a window with the pool up and nothing else happening (probe rounds)."""
    sampler = Sampler(pid)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sampler.sample()
        time.sleep(1)
    return sampler.result()


def job_latencies(fleet: OperatorFleet, custom: CustomObjectsApi, namespace: str, jobs: int,
                  pid: int) -> dict[str, Any]:
    """Apply GenerationJobs one at a time: seconds to the job queued in Redis and to status.phase Queued."""
    owner = owner_for(namespace)
    to_redis: list[float] = []
    to_status: list[float] = []
    sampler = Sampler(pid)
    for n in range(jobs):
        body = txt2img_job(f"gj-{n}", POOL, steps=10, seed=n)
        started = time.monotonic()
        created = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, JOB_PLURAL, body)
        key = fleet.dispatcher.keys.idempotency(owner, created["metadata"]["uid"])
        in_redis = in_status = None
        polls = 0
        while in_redis is None or in_status is None:
            now = time.monotonic() - started
            if now > 60:
                raise RuntimeError(f"GenerationJob gj-{n} not queued after 60 s\n{fleet.logs()}")
            if in_redis is None and (job_id := fleet.conn.get(key)):
                job = fleet.dispatcher.repo.get(job_id.decode())
                if job is not None:
                    in_redis = now
            if in_status is None and polls % 4 == 0:
                resp: Any = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, JOB_PLURAL, f"gj-{n}",
                                                                _preload_content=False)
                if (json.loads(resp.data).get("status") or {}).get("phase") == "Queued":
                    in_status = time.monotonic() - started
            polls += 1
            sampler.sample()
            time.sleep(JOB_POLL_SECONDS)
        to_redis.append(in_redis)
        to_status.append(in_status)

    def stats(xs: list[float]) -> dict[str, float]:
        return {"p50_ms": median(xs) * 1000, "p90_ms": pct(xs, 90) * 1000, "max_ms": max(xs) * 1000,
                "min_ms": min(xs) * 1000}

    return {"jobs": jobs, "to_redis": stats(to_redis), "to_status": stats(to_status), "operator": sampler.result()}


def run(replicas: int = 200, jobs: int = 50, probe_interval: float = 5.0, keep: Path | None = None,
        profile: Path | None = None) -> dict[str, Any]:
    """The whole benchmark; profile: also sample the operator with pyinstrument from the apply to the last
    GenerationJob (bench/profiled_operator.py) and write the tree there (the figures then include its cost)."""
    plane = ControlPlane(extra_identities={"operator": OPERATOR_IDENTITY, "nobody": NOBODY_IDENTITY},
                         bin_dir=control_plane_binaries())
    plane.start()
    # Production loops, not the k8s tests' fast ones (OPERATOR_ENV): probes every probe_interval, a queued
    # GenerationJob's status refreshed every 2 s (the settings' default).
    env = {"COMFYFLEET_PROBE_INTERVAL_SECONDS": str(probe_interval), "COMFYFLEET_JOB_SYNC_INTERVAL_SECONDS": "2",
           "COMFYFLEET_LOG_LEVEL": "INFO"}
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    load = {"start": loadavg()}
    try:
        with tempfile.TemporaryDirectory(prefix="operator-scale-") as tmp:
            workdir = keep or Path(tmp)
            session = workdir / "operator.pyisession"
            command = ([sys.executable, str(Path(__file__).with_name("profiled_operator.py")), str(session)]
                       if profile else None)
            fleet = OperatorFleet(plane, workdir, workers=0, env=env, pods_per_process=replicas,
                                  operator_command=command)
            api = plane.api_client("admin")
            core, custom = CoreV1Api(api), CustomObjectsApi(api)
            try:
                assert fleet.operator is not None
                pid = fleet.operator.pid
                core.create_namespace({"metadata": {"name": namespace}})
                idle = steady(pid, 3.0)
                if profile:
                    os.kill(pid, signal.SIGUSR1)
                scale = scale_up(fleet, core, custom, namespace, replicas, pid)
                load["after_scale_up"] = loadavg()
                rest = steady(pid, STEADY_SECONDS)
                latency = job_latencies(fleet, custom, namespace, jobs, pid)
                if profile:
                    os.kill(pid, signal.SIGUSR2)
                    save_profile(session, profile)
                kubelet_errors = list(fleet.kubelet.errors) if fleet.kubelet else []
                sim_processes = len(fleet.kubelet.hosts) if fleet.kubelet else 0
            finally:
                api.close()
                fleet.stop()
    finally:
        plane.stop()
    load["end"] = loadavg()
    return {"replicas": replicas, "probe_interval_s": probe_interval, "sim_processes": sim_processes,
            "idle": idle, "scale_up": scale, "steady": rest, "generationjobs": latency, "load": load,
            "kubelet_errors": kubelet_errors[-5:]}


def save_profile(session_path: Path, out: Path, timeout: float = 60) -> None:
    """Wait for the operator to write its pyinstrument session, then render it as text to out."""
    from pyinstrument.renderers import ConsoleRenderer
    from pyinstrument.session import Session

    deadline = time.monotonic() + timeout
    while not session_path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the operator wrote no profile to {session_path}")
        time.sleep(0.2)
    text = ConsoleRenderer(unicode=False, color=False, show_all=False, short_mode=False).render(
        Session.load(str(session_path)))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


def report(r: dict[str, Any]) -> str:
    s, op = r["scale_up"]["seconds"], r["scale_up"]["operator"]
    gj = r["generationjobs"]
    return (f"{r['replicas']} pods ({r['sim_processes']} simulator process(es)): created {s['created']:.1f} s, "
            f"Ready {s['ready']:.1f} s, all registered {s['registered']:.1f} s (goal <= 30 s); operator during "
            f"scale-up {op['cpu_percent']:.0f} % of a core, RSS peak {op['peak_rss_mib']:.0f} MiB (idle "
            f"{r['idle']['rss_mib']:.0f}); with {r['replicas']} pods at rest {r['steady']['cpu_percent']:.1f} % CPU; "
            f"GenerationJob applied -> queued p50 {gj['to_redis']['p50_ms']:.0f} ms, max "
            f"{gj['to_redis']['max_ms']:.0f} ms (-> status Queued p50 {gj['to_status']['p50_ms']:.0f} ms, "
            f"max {gj['to_status']['max_ms']:.0f} ms) over {gj['jobs']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--probe-interval", type=float, default=5.0, help="the operator's timer, seconds")
    parser.add_argument("--keep", type=Path, help="keep logs (operator, simulator) in this folder")
    parser.add_argument("--profile", type=Path, help="write a pyinstrument tree of the operator here")
    args = parser.parse_args()
    r = run(args.replicas, args.jobs, args.probe_interval, args.keep, args.profile)
    print(report(r))
    print(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
