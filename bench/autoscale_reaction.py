"""Autoscaler reaction: enqueue of a burst -> the pods the decision asks for exist, on the test control plane.

Starts the k8s tier's real etcd + kube-apiserver, Redis and `comfyfleet operator` (as the chart's
ServiceAccount, with a long probe interval so the timer never helps), no dispatch processes and no
kubelet (pods only need to be created, not to run). Each round applies a fresh autoscaled pool
(minReplicas 0, maxReplicas PODS, one job per pod), waits for the operator to report it ScaledToZero,
queues a burst of BURST jobs for it the way the API does (`Dispatcher.submit`), and times the moment
the pool has PODS pods (the API server is polled every POLL_SECONDS). Prints p50/max; asserts nothing.

    python bench/autoscale_reaction.py [--rounds 10] [--burst 8] [--pods 4] [--probe-interval 30]
    python bench/autoscale_reaction.py --no-reaction --probe-interval 5   # timer only, for comparison
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.k8s: the control plane harness

from kubernetes.client import CoreV1Api  # noqa: E402

from comfyfleet.jobs.model import Job  # noqa: E402
from tests.k8s.conftest import NOBODY_IDENTITY, OPERATOR_IDENTITY  # noqa: E402
from tests.k8s.envtest import ControlPlane  # noqa: E402
from tests.k8s.operator_harness import OperatorFleet, apply_yaml, kubectl_ok, worker_manifest  # noqa: E402

POLL_SECONDS = 0.02


def one_round(fleet: OperatorFleet, core: CoreV1Api, namespace: str, n: int, burst: int, pods: int) -> float:
    """Seconds from the first enqueue of a burst to `pods` pods of a fresh pool."""
    pool = f"r{n}"
    auto = {"enabled": True, "minReplicas": 0, "maxReplicas": pods, "targetQueuePerWorker": 1}
    apply_yaml(fleet.plane, [worker_manifest(pool, autoscaling=auto)], namespace)
    fleet.wait(lambda: (fleet.get("comfyuiworker", pool, namespace).get("status") or {}).get("phase")
               == "ScaledToZero", 30, f"{pool} ScaledToZero")
    jobs = [Job(owner=f"k8s:{namespace}", workflow={}, pool=pool) for _ in range(burst)]
    started = time.perf_counter()
    for job in jobs:
        fleet.dispatcher.submit(job)
    selector = f"comfyfleet.io/pool={pool}"
    deadline = started + 120
    while len(core.list_namespaced_pod(namespace, label_selector=selector).items) < pods:
        if time.perf_counter() > deadline:
            raise SystemExit(f"round {n}: {pods} pods did not appear within 120 s\n{fleet.logs()}")
        time.sleep(POLL_SECONDS)
    elapsed = time.perf_counter() - started
    for job in jobs:
        fleet.dispatcher.cancel(job.id)
    kubectl_ok(fleet.plane, "delete", "comfyuiworker", pool, "-n", namespace, "--timeout=60s")
    return elapsed


def run(rounds: int = 10, burst: int = 8, pods: int = 4, probe_interval: float = 30.0,
        reaction: bool = True) -> dict[str, Any]:
    """Repeated bursts on one control plane and operator; the seconds of each round, with p50/max (make bench)."""
    from operator_scale import control_plane_binaries

    plane = ControlPlane(extra_identities={"operator": OPERATOR_IDENTITY, "nobody": NOBODY_IDENTITY},
                         bin_dir=control_plane_binaries())
    plane.start()
    env = {"COMFYFLEET_PROBE_INTERVAL_SECONDS": str(probe_interval),
           "COMFYFLEET_SCALE_UP_ON_WAKE": "true" if reaction else "false"}
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    samples: list[float] = []
    try:
        with tempfile.TemporaryDirectory(prefix="autoscale-reaction-") as tmp:
            fleet = OperatorFleet(plane, Path(tmp), workers=0, env=env)
            if fleet.kubelet is not None:  # pods only need to exist: no simulators to start
                fleet.kubelet.stop()
                fleet.kubelet = None
            api = plane.api_client("admin")
            core = CoreV1Api(api)
            try:
                core.create_namespace({"metadata": {"name": namespace}})
                for n in range(rounds):
                    samples.append(one_round(fleet, core, namespace, n, burst, pods))
                    print(f"round {n + 1}/{rounds}: {samples[-1] * 1000:.0f} ms", flush=True)
            finally:
                api.close()
                fleet.stop()
    finally:
        plane.stop()
    return {"rounds": rounds, "burst": burst, "pods": pods, "probe_interval_s": probe_interval, "reaction": reaction,
            "samples_s": samples, "p50_s": statistics.median(samples), "max_s": max(samples),
            "min_s": min(samples)}


def report(r: dict[str, Any]) -> str:
    mode = "wake-up reaction" if r["reaction"] else "timer only"
    return (f"autoscale reaction ({mode}, probe interval {r['probe_interval_s']:g} s, burst {r['burst']} jobs -> "
            f"{r['pods']} pods, {r['rounds']} rounds): enqueue -> pods created p50 {r['p50_s'] * 1000:.0f} ms, "
            f"max {r['max_s'] * 1000:.0f} ms, min {r['min_s'] * 1000:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--burst", type=int, default=8, help="jobs queued per burst")
    parser.add_argument("--pods", type=int, default=4, help="maxReplicas: the pods each burst asks for")
    parser.add_argument("--probe-interval", type=float, default=30.0, help="the operator's timer, seconds")
    parser.add_argument("--no-reaction", action="store_true", help="timer only (COMFYFLEET_SCALE_UP_ON_WAKE=false)")
    args = parser.parse_args()
    print(report(run(args.rounds, args.burst, args.pods, args.probe_interval, not args.no_reaction)))


if __name__ == "__main__":
    main()
