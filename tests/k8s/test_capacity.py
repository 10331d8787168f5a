"""Dispatch capacity follows the fleet (issue 8 item 2), against a real kube-apiserver.

The dispatch processes are started exactly as the chart's dispatcher Deployment runs them: its
replica count, its container args and its COMFYFLEET_MAX_IN_FLIGHT, rendered with `helm template`
(each process gets its own COMFYFLEET_DISPATCHER_PORT, as each pod has its own network).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from tests.k8s.envtest import ControlPlane
from tests.k8s.operator_harness import OperatorFleet, apply_yaml, kubectl_ok, txt2img_job, worker_manifest
from tests.support.procs import ManagedProcess, free_port
from tests.unit.test_chart import CHART, helm

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(480)]

# The sampler runs 0.3 s a step here: a 150-step job holds its pod ~45 s, ample time to see every
# pod busy at once on a loaded machine (the test waits for that, it never times it; with the old
# fork-per-job workers and 12 slots it took ~20 s on 2 busy cores to get all 12 running).
STEP_SECONDS = 0.3
LONG_JOB_STEPS = 150
# The old chart's default: 2 RQ worker pods x concurrency 4 = 8 pods driven at once at most.
OLD_DEFAULT_SLOTS = 8
POOL_SIZE = 12


def chart_dispatcher() -> dict[str, Any]:
    """The chart's default dispatcher Deployment, as `helm template` renders it."""
    proc = helm("template", "cf", str(CHART), "--show-only", "templates/dispatcher.yaml")
    assert proc.returncode == 0, proc.stderr
    return next(d for d in yaml.safe_load_all(proc.stdout) if d and d["kind"] == "Deployment")


@pytest.fixture
def fleet(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[OperatorFleet]:
    """Redis, the operator, the kubelet stand-in; no dispatch process yet (each test starts its own)."""
    # The dispatchers must run with the chart's value or their own default, never the caller's shell.
    monkeypatch.delenv("COMFYFLEET_MAX_IN_FLIGHT", raising=False)
    running = OperatorFleet(control_plane, tmp_path_factory.mktemp("capacity-fleet"), workers=0,
                            step_seconds=STEP_SECONDS)
    try:
        yield running
    finally:
        running.stop()


def start_chart_dispatchers(fleet: OperatorFleet, replicas: int | None = None,
                            max_in_flight: str | None = None) -> list[tuple[ManagedProcess, int]]:
    """Start the chart's dispatch processes (its args and env); return each process with its HTTP port."""
    deployment = chart_dispatcher()
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if e["name"] == "COMFYFLEET_MAX_IN_FLIGHT"}
    if max_in_flight is not None:
        env["COMFYFLEET_MAX_IN_FLIGHT"] = max_in_flight
    started = []
    for _ in range(deployment["spec"]["replicas"] if replicas is None else replicas):
        port = free_port()
        proc = fleet.start_dispatch(*container["args"], env={**env, "COMFYFLEET_DISPATCHER_PORT": str(port)})
        started.append((proc, port))
    return started


def capacity_condition(fleet: OperatorFleet, namespace: str, pool: str) -> dict[str, Any] | None:
    conditions = (fleet.get("comfyuiworker", pool, namespace).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "DispatchCapacity"), None)


def wait_capacity(fleet: OperatorFleet, namespace: str, pool: str, reason: str, timeout: float = 40) -> dict:
    def reached() -> dict[str, Any] | None:
        cond = capacity_condition(fleet, namespace, pool)
        return cond if cond and cond["reason"] == reason else None

    return fleet.wait(reached, timeout, f"DispatchCapacity {reason} on pool {pool}")  # type: ignore[no-any-return]


def operator_metric(fleet: OperatorFleet, name: str) -> float | None:
    for line in httpx.get(f"http://127.0.0.1:{fleet.metrics_port}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def event_reasons(fleet: OperatorFleet, namespace: str, pool: str) -> str:
    return kubectl_ok(fleet.plane, "get", "events", "-n", namespace, "--field-selector",
                      f"involvedObject.name={pool}", "-o", "jsonpath={.items[*].reason}")


def running_prompts(fleet: OperatorFleet, namespace: str, pods: set[str]) -> dict[str, int]:
    """Pod -> prompts its ComfyUI (simulator) is executing right now, asked of every pod in one sweep."""
    assert fleet.kubelet is not None
    counts = {}
    for pod in sorted(pods):
        sim = fleet.kubelet.sim(namespace, pod)
        queue = httpx.get(f"http://{sim.ip}:8188/queue", timeout=5).json()
        counts[pod] = len(queue["queue_running"])
    return counts


# ---------------------------------------------------------------------------------------------


def test_no_dispatcher_is_reported_on_the_pool(fleet: OperatorFleet, namespace: str) -> None:
    """Ready pods with no live dispatcher: the pool says so (condition, event, log line, metrics)."""
    apply_yaml(fleet.plane, [worker_manifest("lonely", replicas=1)], namespace)
    fleet.wait_ready_pods(namespace, "lonely", 1)
    cond = wait_capacity(fleet, namespace, "lonely", "NoDispatchers")
    assert cond["status"] == "False"
    assert "no live dispatcher" in cond["message"] and "1 ready pod(s)" in cond["message"]
    fleet.wait(lambda: "NoDispatchers" in event_reasons(fleet, namespace, "lonely"), 20, "a NoDispatchers event")
    fleet.wait(lambda: "NOT ENOUGH DISPATCH CAPACITY" in fleet.operator_log(), 20, "the operator's warning")
    assert operator_metric(fleet, "comfyfleet_operator_dispatchers") == 0
    assert operator_metric(fleet, "comfyfleet_operator_dispatch_slots_short") == 1


def test_pool_scaled_past_the_old_slots_runs_a_job_on_every_pod_at_once(
    fleet: OperatorFleet, namespace: str
) -> None:
    """12 pods (more than the old default's 8 slots) run 12 jobs at once with the chart's defaults."""
    dispatchers = start_chart_dispatchers(fleet)
    deployment = chart_dispatcher()
    liveness = deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["path"]
    for proc, port in dispatchers:
        url = f"http://127.0.0.1:{port}{liveness}"

        def alive(url: str = url) -> bool:
            return httpx.get(url, timeout=2).is_success

        fleet.wait(alive, 60, f"dispatcher {liveness} on port {port}\n{proc.log_text()[-3000:]}")
        # The chart's ServiceMonitor scrapes /metrics on the same port.
        assert httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).is_success

    apply_yaml(fleet.plane, [worker_manifest("wide", replicas=2)], namespace)
    fleet.wait_ready_pods(namespace, "wide", 2)
    kubectl_ok(fleet.plane, "scale", "comfyuiworker/wide", f"--replicas={POOL_SIZE}", "-n", namespace)
    pods = fleet.wait_ready_pods(namespace, "wide", POOL_SIZE, timeout=180)
    assert len(pods) > OLD_DEFAULT_SLOTS

    cond = wait_capacity(fleet, namespace, "wide", "EnoughDispatchSlots")
    slots = sum(int(e["value"]) for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
                if e["name"] == "COMFYFLEET_MAX_IN_FLIGHT") * deployment["spec"]["replicas"]
    assert cond["status"] == "True" and f"{slots} dispatch slot(s)" in cond["message"], cond

    jobs = [txt2img_job(f"wide-{n}", "wide", steps=LONG_JOB_STEPS, seed=1000 + n) for n in range(POOL_SIZE)]
    apply_yaml(fleet.plane, jobs, namespace)
    busy = fleet.wait(lambda: (c := running_prompts(fleet, namespace, pods)) and all(c.values()) and c, 120,
                      f"a prompt running on each of the {POOL_SIZE} pods at once")
    assert set(busy) == pods and set(busy.values()) == {1}
    for job in jobs:
        gj = fleet.wait_job_phase(namespace, job["metadata"]["name"], ("Succeeded", "Failed", "Cancelled"),
                                  timeout=180)
        assert gj["status"]["phase"] == "Succeeded", json.dumps(gj["status"])
    workers = {gj["status"]["worker"] for gj in
               (fleet.get("generationjob", job["metadata"]["name"], namespace) for job in jobs)}
    assert len(workers) == POOL_SIZE, workers  # one job per pod: none waited for another's pod


def test_too_few_slots_are_reported_and_clear_when_dispatchers_are_added(
    fleet: OperatorFleet, namespace: str
) -> None:
    """One dispatcher capped at 2 for 3 ready pods: False with the numbers; a second one fixes it;
    killed dispatchers drop out of the count once their roster entries expire."""
    first = start_chart_dispatchers(fleet, replicas=1, max_in_flight="2")
    apply_yaml(fleet.plane, [worker_manifest("tight", replicas=3)], namespace)
    fleet.wait_ready_pods(namespace, "tight", 3)
    cond = wait_capacity(fleet, namespace, "tight", "NotEnoughDispatchSlots")
    assert cond["status"] == "False"
    for words in ("3 ready pod(s) need 3", "1 live dispatcher(s) offer 2", "up to 1 pod(s)"):
        assert words in cond["message"], cond["message"]
    fleet.wait(lambda: "NotEnoughDispatchSlots" in event_reasons(fleet, namespace, "tight"), 20, "a warning event")
    assert operator_metric(fleet, "comfyfleet_operator_dispatch_slots") == 2
    assert operator_metric(fleet, "comfyfleet_operator_dispatch_slots_short") == 1

    second = start_chart_dispatchers(fleet, replicas=1, max_in_flight="2")
    cond = wait_capacity(fleet, namespace, "tight", "EnoughDispatchSlots", timeout=60)
    assert cond["status"] == "True" and "4 dispatch slot(s) on 2 live dispatcher(s)" in cond["message"]
    assert operator_metric(fleet, "comfyfleet_operator_dispatch_slots_short") == 0

    for proc, _ in first + second:
        proc.kill()  # SIGKILL: no clean deregistration, only the roster's expiry scores
    cond = wait_capacity(fleet, namespace, "tight", "NoDispatchers", timeout=60)
    assert cond["status"] == "False"
