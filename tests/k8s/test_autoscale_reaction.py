"""The operator's reaction to queue wake-ups, against a real kube-apiserver (chart RBAC, real Redis).

The operator runs with a long probe interval (PROBE_INTERVAL_SECONDS), so its timer ticks when a
pool appears and then not again for that long: pods that appear for a burst well inside that
window can only come from the wake-up path (the ScaledUp event says so too). Scale-down stays on
the timer and still waits for scaleDownIdleSeconds. No dispatch processes run: jobs only queue.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from comfyfleet.jobs.model import Job
from tests.k8s.envtest import ControlPlane
from tests.k8s.operator_harness import OperatorFleet, apply_yaml, kubectl_ok, worker_manifest

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(240)]

PROBE_INTERVAL_SECONDS = 30
# Longer than the time from the burst to the first timer tick after it, shorter than to the second:
# the first tick must hold the idle pods, the second removes them.
IDLE_SECONDS = 40
# A functional bound, far above the reaction's ~1 s and far below the next timer tick.
REACTION_BOUND_SECONDS = 10


@pytest.fixture(scope="module")
def slow_timer_fleet(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorFleet]:
    running = OperatorFleet(control_plane, tmp_path_factory.mktemp("reaction-fleet"), workers=0,
                            env={"COMFYFLEET_PROBE_INTERVAL_SECONDS": str(PROBE_INTERVAL_SECONDS)})
    try:
        yield running
    finally:
        running.stop()


def scaling_message(fleet: OperatorFleet, namespace: str, pool: str) -> str:
    status = fleet.get("comfyuiworker", pool, namespace).get("status") or {}
    return next((c.get("message", "") for c in status.get("conditions") or [] if c.get("type") == "Scaling"), "")


def test_burst_scales_up_between_timer_ticks_and_scale_down_waits_for_idle(
    slow_timer_fleet: OperatorFleet, namespace: str
) -> None:
    fleet = slow_timer_fleet
    auto = {"enabled": True, "minReplicas": 1, "maxReplicas": 4, "targetQueuePerWorker": 1,
            "scaleDownIdleSeconds": IDLE_SECONDS}
    apply_yaml(fleet.plane, [worker_manifest("burst", autoscaling=auto)], namespace)
    first = fleet.wait(lambda: (p := fleet.pod_names(namespace, "burst")) and len(p) == 1 and p, 20, "minReplicas pod")

    # A burst as the API queues it: jobs for this pool and jobs for any pool (which every pool counts).
    jobs = [Job(owner=f"k8s:{namespace}", workflow={}, pool="burst" if i % 2 else None) for i in range(6)]
    for job in jobs:
        fleet.dispatcher.submit(job)
    most = 0

    def four_pods() -> set[str] | None:
        nonlocal most
        names = fleet.pod_names(namespace, "burst")
        most = max(most, len(names))
        return names if len(names) == 4 else None

    pods = fleet.wait(four_pods, REACTION_BOUND_SECONDS, "4 pods (maxReplicas) on the queue wake-up")
    assert first <= pods
    events = kubectl_ok(fleet.plane, "get", "events", "-n", namespace, "--field-selector",
                        "involvedObject.name=burst,reason=ScaledUp", "-o", "jsonpath={.items[*].message}")
    assert "on a queue wake-up" in events, events
    assert most == 4  # never past maxReplicas while the burst's wake-ups kept coming

    # The queue empties; a wake-up never removes pods, and the timer keeps them until they are idle long enough.
    for job in jobs:
        fleet.dispatcher.cancel(job.id)
    fleet.dispatcher.scheduler.wake()
    fleet.wait(lambda: "holding 3 pod(s)" in scaling_message(fleet, namespace, "burst"), PROBE_INTERVAL_SECONDS + 15,
               "the next timer tick holds the not-yet-idle pods")
    status = fleet.get("comfyuiworker", "burst", namespace)["status"]
    assert status["queueDepth"] == 0 and status["desiredReplicas"] == 4
    assert fleet.pod_names(namespace, "burst") == pods  # the same 4: no duplicate was created meanwhile
    fleet.wait(lambda: len(fleet.pod_names(namespace, "burst")) == 1, PROBE_INTERVAL_SECONDS + 30,
               "scale down to minReplicas once the pods were idle for scaleDownIdleSeconds")


def test_a_deleted_pool_is_not_scaled_by_a_wake_up(slow_timer_fleet: OperatorFleet, namespace: str) -> None:
    """Jobs queued for a pool that is gone create nothing, while a live pool reacts to the same wake-up."""
    fleet = slow_timer_fleet
    auto = {"enabled": True, "minReplicas": 0, "maxReplicas": 3, "targetQueuePerWorker": 1}
    apply_yaml(fleet.plane, [worker_manifest(n, autoscaling=auto) for n in ("gone", "alive")], namespace)
    for pool in ("gone", "alive"):

        def scaled_to_zero(p: str = pool) -> bool:
            return (fleet.get("comfyuiworker", p, namespace).get("status") or {}).get("phase") == "ScaledToZero"

        fleet.wait(scaled_to_zero, 20, f"{pool} ScaledToZero")
    kubectl_ok(fleet.plane, "delete", "comfyuiworker", "gone", "-n", namespace, "--timeout=30s")
    for pool in ("gone", "gone", "alive"):
        fleet.dispatcher.submit(Job(owner=f"k8s:{namespace}", workflow={}, pool=pool))
    # Well before alive's next timer tick: only a wake-up pass, which also saw the jobs for "gone".
    fleet.wait(lambda: len(fleet.pod_names(namespace, "alive")) == 1, REACTION_BOUND_SECONDS, "1 pod for alive")
    assert fleet.pod_names(namespace, "gone") == set()
