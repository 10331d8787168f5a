"""Pure reading of worker pod watch events: which events change a pod's serving state."""

from __future__ import annotations

from typing import Any

import pytest

from comfyfleet.operator.builders import build_worker_pod
from comfyfleet.operator.models import ComfyUIWorkerSpec
from comfyfleet.operator.readiness import PodSignal, PoolRef, ReadinessTracker, pod_signal

SPEC = ComfyUIWorkerSpec(image="x")
POOL = PoolRef("ns", "pool", "owner-uid")


def k8s_pod(name: str = "pool-abcde", *, ready: bool = True, ip: str | None = "10.0.0.7", phase: str = "Running",
            deleting: bool = False) -> dict[str, Any]:
    pod = build_worker_pod("pool", "ns", SPEC, name, "owner-uid")
    if deleting:
        pod["metadata"]["deletionTimestamp"] = "2023-11-14T22:20:00Z"
    pod["status"] = {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                     **({"podIP": ip} if ip else {})}
    return pod


@pytest.mark.parametrize(("pod", "deleted", "serving_at"), [
    (k8s_pod(), False, "http://10.0.0.7:8188"),
    (k8s_pod(ready=False), False, None),
    (k8s_pod(ip=None), False, None),  # Ready without an IP: nowhere to send jobs yet
    (k8s_pod(phase="Failed"), False, None),
    (k8s_pod(deleting=True), False, None),
    (k8s_pod(), True, None),  # a DELETED event serves nowhere, whatever its last status said
])
def test_signal_says_where_a_pod_serves(pod: dict[str, Any], deleted: bool, serving_at: str | None) -> None:
    assert pod_signal(pod, deleted=deleted) == PodSignal(POOL, "pool-abcde", serving_at)


def test_pods_no_comfyuiworker_controls_give_no_signal() -> None:
    orphan = k8s_pod()
    orphan["metadata"]["ownerReferences"] = []
    foreign = k8s_pod()
    foreign["metadata"]["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs",
                                               "uid": "rs-uid", "controller": True}]
    assert pod_signal(orphan) is None
    assert pod_signal(foreign) is None


def test_pool_name_comes_from_the_pool_label_and_uid_from_the_owner() -> None:
    signal = pod_signal(k8s_pod())
    assert signal is not None and signal.pool == POOL


def test_tracker_reports_only_changes_of_serving_state() -> None:
    tracker = ReadinessTracker()
    created, ready = pod_signal(k8s_pod(ready=False)), pod_signal(k8s_pod())
    moved, gone = pod_signal(k8s_pod(ip="10.0.0.9")), pod_signal(k8s_pod(), deleted=True)
    assert created and ready and moved and gone
    steps = [
        (created, False, False),  # a new pod not serving yet: nothing to publish
        (created, False, False),  # the same again (a status write that changes nothing we use)
        (ready, False, True),  # turned Ready: publish
        (ready, False, False),
        (moved, False, True),  # serves at another address: publish the new URL
        (created, False, True),  # not Ready any more: withdraw
        (ready, False, True),
        (gone, True, True),  # deleted while serving: withdraw
    ]
    for signal, deleted, changed in steps:
        assert tracker.changed(signal, deleted=deleted) is changed, (signal, deleted)
    assert len(tracker) == 0  # a deleted pod is forgotten


def test_tracker_publishes_pods_first_seen_serving() -> None:
    """An operator restart lists pods that are Ready already: they may not be published yet."""
    tracker = ReadinessTracker()
    ready = pod_signal(k8s_pod())
    assert ready is not None
    assert tracker.changed(ready) is True
    assert tracker.changed(ready) is False


def test_a_never_serving_pod_deleted_changes_nothing() -> None:
    tracker = ReadinessTracker()
    pending, gone = pod_signal(k8s_pod(ready=False)), pod_signal(k8s_pod(ready=False), deleted=True)
    assert pending and gone
    tracker.changed(pending)
    assert tracker.changed(gone, deleted=True) is False
    assert len(tracker) == 0
