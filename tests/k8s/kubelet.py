"""Play the kubelet in k8s tests: write pod status the way a kubelet would.

The test control plane has no kubelet, scheduler or controller-manager, so a pod the operator
creates stays Pending until a test marks it. Each simulated pod gets its own loopback address
(`loopback_ip(n)`, port 8188 for the ComfyUI simulator): Linux routes all of 127.0.0.0/8 to lo,
so a simulator bound to 127.0.0.N is reachable at the podIP the operator reads. Many pods hosted by
one simulator process take a block of addresses elsewhere in 127.0.0.0/8 (`loopback_block`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from kubernetes.client import CoreV1Api, V1Pod

COMFY_PORT = 8188
# Pods stay unbound (no scheduler, no Node objects): the apiserver accepts status on them, and
# deleting an unbound pod is immediate, with no kubelet needed to confirm it.
HOST_IP = "127.0.0.1"


def loopback_ip(n: int) -> str:
    """The loopback address of simulated pod n (1..254): 127.0.0.n."""
    if not 1 <= n <= 254:
        raise ValueError(f"pod number {n} is outside 1..254")
    return f"127.0.0.{n}"


def loopback_block(count: int, second: int, third: int) -> list[str]:
    """count addresses from 127.second.third.1 on, 1..254 of each /24 and then the next third octet.

    127.0.0.x is left to `loopback_ip`, so a block never collides with a one-process-per-pod simulator.
    """
    if count < 1:
        raise ValueError(f"a block holds at least one address, not {count}")
    if not 0 <= second <= 255 or not 0 <= third <= 255 or (second, third) == (0, 0):
        raise ValueError(f"127.{second}.{third}.0/24 is not a block (127.0.0.0/24 is loopback_ip's)")
    last = third + (count - 1) // 254
    if last > 255:
        raise ValueError(f"{count} addresses from 127.{second}.{third}.1 run past 127.{second}.255.254")
    return [f"127.{second}.{third + i // 254}.{i % 254 + 1}" for i in range(count)]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _conditions(ready: bool, now: str) -> list[dict[str, Any]]:
    value = "True" if ready else "False"
    return [
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
        {"type": "Initialized", "status": "True", "lastTransitionTime": now},
        {"type": "ContainersReady", "status": value, "lastTransitionTime": now},
        {"type": "Ready", "status": value, "lastTransitionTime": now},
    ]


def _container_statuses(pod: V1Pod, ready: bool, state: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "name": c.name,
            "image": c.image,
            "imageID": f"sim://{c.image}",
            "containerID": f"sim://{pod.metadata.uid}/{c.name}",
            "ready": ready,
            "started": "running" in state,
            "restartCount": 0,
            "state": state,
        }
        for c in pod.spec.containers
    ]


def _patch_status(core_v1: CoreV1Api, namespace: str, name: str, status: dict[str, Any]) -> V1Pod:
    return core_v1.patch_namespaced_pod_status(name, namespace, {"status": status})


def mark_pod_running(core_v1: CoreV1Api, namespace: str, name: str, pod_ip: str, ready: bool = True) -> V1Pod:
    """Set phase Running with pod_ip, containers running, and Ready/ContainersReady = ready."""
    pod = core_v1.read_namespaced_pod(name, namespace)
    now = _now()
    started = pod.status.start_time.strftime("%Y-%m-%dT%H:%M:%SZ") if pod.status.start_time else now
    state = {"running": {"startedAt": started}}
    return _patch_status(
        core_v1,
        namespace,
        name,
        {
            "phase": "Running",
            "hostIP": HOST_IP,
            "hostIPs": [{"ip": HOST_IP}],
            "podIP": pod_ip,
            "podIPs": [{"ip": pod_ip}],
            "startTime": started,
            "conditions": _conditions(ready, now),
            "containerStatuses": _container_statuses(pod, ready, state),
        },
    )


def mark_pod_ready(core_v1: CoreV1Api, namespace: str, name: str, pod_ip: str) -> V1Pod:
    """Make a pod Running and Ready at pod_ip, as a kubelet does once its readiness probe passes."""
    return mark_pod_running(core_v1, namespace, name, pod_ip, ready=True)


def mark_pod_not_ready(core_v1: CoreV1Api, namespace: str, name: str) -> V1Pod:
    """Keep a pod Running at its IP but failing readiness (Ready/ContainersReady False)."""
    pod = core_v1.read_namespaced_pod(name, namespace)
    if not pod.status.pod_ip:
        raise ValueError(f"pod {namespace}/{name} has no podIP yet; mark it running first")
    return mark_pod_running(core_v1, namespace, name, pod.status.pod_ip, ready=False)


def mark_pod_failed(core_v1: CoreV1Api, namespace: str, name: str, reason: str = "Error", exit_code: int = 1) -> V1Pod:
    """Set phase Failed with every container terminated (exit_code), as after a crash."""
    pod = core_v1.read_namespaced_pod(name, namespace)
    now = _now()
    state = {"terminated": {"exitCode": exit_code, "reason": reason, "startedAt": now, "finishedAt": now}}
    return _patch_status(
        core_v1,
        namespace,
        name,
        {
            "phase": "Failed",
            "reason": reason,
            "message": f"simulated failure: {reason}",
            "conditions": _conditions(False, now),
            "containerStatuses": _container_statuses(pod, False, state),
        },
    )


def pod_is_ready(pod: V1Pod) -> bool:
    """True when the pod's Ready condition is True."""
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
