"""A ComfyUIWorker with no pods is still a pool the API accepts jobs for (the operator declares it, issue 9)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from comfyfleet.fairuse.pools import known_pools
from tests.k8s.envtest import ControlPlane
from tests.k8s.operator_harness import OperatorFleet, apply_yaml, worker_manifest

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def fleet(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorFleet]:
    running = OperatorFleet(control_plane, tmp_path_factory.mktemp("pools-fleet"), workers=0)
    try:
        yield running
    finally:
        running.stop()


def test_a_pool_scaled_to_zero_is_known(fleet: OperatorFleet, namespace: str) -> None:
    auto = {"enabled": True, "minReplicas": 0, "maxReplicas": 1, "scaleDownIdleSeconds": 1}
    apply_yaml(fleet.plane, [worker_manifest("idle-pool", autoscaling=auto)], namespace)
    fleet.wait(lambda: (fleet.get("comfyuiworker", "idle-pool", namespace).get("status") or {}).get("phase")
               == "ScaledToZero", 20, "phase ScaledToZero")
    assert fleet.pod_names(namespace, "idle-pool") == set()
    fleet.wait(lambda: "idle-pool" in known_pools(fleet.dispatcher), 15, "the operator to declare the pool")
    assert "no-such-pool" not in known_pools(fleet.dispatcher)
