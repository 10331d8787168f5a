"""Pods are registered for dispatch as soon as the kubelet says Ready, many of them hosted by one simulator.

The operator runs with a probe interval longer than the test (PROBE_INTERVAL_SECONDS): its pool timer
ticks when the pool appears (its passes create the pods, which are not Ready yet) and not again, so
pods are registered and withdrawn here by the operator's pod watch. The kubelet stand-in hosts all
pods in one simulator process, each on its own loopback address.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.k8s.envtest import ControlPlane
from tests.k8s.kubelet import mark_pod_not_ready
from tests.k8s.operator_harness import OperatorFleet, apply_yaml, txt2img_job, worker_manifest

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(240)]

PROBE_INTERVAL_SECONDS = 600
PODS = 12
# A functional bound, far below the next timer tick.
BOUND_SECONDS = 60


@pytest.fixture(scope="module")
def hosted_fleet(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorFleet]:
    running = OperatorFleet(control_plane, tmp_path_factory.mktemp("registration-fleet"), workers=1,
                            env={"COMFYFLEET_PROBE_INTERVAL_SECONDS": str(PROBE_INTERVAL_SECONDS)},
                            pods_per_process=16)
    try:
        yield running
    finally:
        running.stop()


def test_pods_of_one_simulator_process_are_registered_and_withdrawn_between_timer_ticks(
    hosted_fleet: OperatorFleet, namespace: str
) -> None:
    fleet = hosted_fleet
    assert fleet.kubelet is not None
    apply_yaml(fleet.plane, [worker_manifest("many", replicas=PODS)], namespace)
    names = fleet.wait_ready_pods(namespace, "many", PODS, timeout=BOUND_SECONDS)

    # Every pod registered at its own address, all served by the one simulator process.
    sims = [fleet.kubelet.sim(namespace, name) for name in names]
    assert all(s.hosted for s in sims) and len({s.proc.pid for s in sims}) == 1
    endpoints = fleet.endpoints(namespace, "many")
    assert {e.url for e in endpoints.values()} == {f"http://{s.ip}:8188" for s in sims}
    assert len({s.ip for s in sims}) == PODS

    # A job runs on one of them.
    apply_yaml(fleet.plane, [txt2img_job("on-many", "many", steps=4)], namespace)
    done = fleet.wait_job_phase(namespace, "on-many", ("Succeeded", "Failed"), timeout=BOUND_SECONDS)["status"]
    assert done["phase"] == "Succeeded", done
    assert done["worker"].split("/", 1)[1] in names

    # The kubelet says one pod is not Ready any more: withdrawn from dispatch without waiting for the timer.
    victim = sorted(names)[0]
    mark_pod_not_ready(fleet.kubelet.core, namespace, victim)
    fleet.wait(lambda: f"k8s:{namespace}/{victim}" not in fleet.endpoints(namespace, "many"), BOUND_SECONDS,
               "the pod that is not Ready any more withdrawn")
    assert len(fleet.endpoints(namespace, "many")) == PODS - 1


def test_fault_injection_needs_a_process_of_the_pods_own(hosted_fleet: OperatorFleet, namespace: str) -> None:
    """Killing a hosted pod's simulator would kill every pod of its process: the stand-in refuses, by name."""
    fleet = hosted_fleet
    assert fleet.kubelet is not None
    apply_yaml(fleet.plane, [worker_manifest("shared", replicas=1)], namespace)
    (name,) = fleet.wait_ready_pods(namespace, "shared", 1, timeout=BOUND_SECONDS)
    with pytest.raises(RuntimeError, match="shares one with other pods"):
        fleet.kubelet.kill_sim(namespace, name)
    assert fleet.kubelet.sim(namespace, name).proc.alive()
