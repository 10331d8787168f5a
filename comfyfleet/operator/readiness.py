"""Pure reading of worker pod watch events: which pool's registry needs a look, and when.

The kopf timer publishes a pool's Ready pods for dispatch once per probe interval; a pod that turns
Ready just after a tick would wait up to that long before it gets jobs. The operator also watches its
worker pods (`registration.py`) and publishes a pool's newly Ready pods (and withdraws the ones that
stop serving) as soon as the kubelet says so. These functions decide, from one watch event at a
time, whether a pod's serving state changed since the operator last saw it. No I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from comfyfleet.operator.builders import LABEL_POOL
from comfyfleet.operator.models import API_VERSION, WORKER_KIND
from comfyfleet.operator.pods import endpoint_url, observe_pod

# A pod with no containerPort: ComfyUI's default, as a ComfyUIWorker's spec.port defaults to it.
DEFAULT_PORT = 8188


@dataclass(frozen=True)
class PoolRef:
    """The ComfyUIWorker that controls a pod."""

    namespace: str
    name: str
    uid: str


@dataclass(frozen=True)
class PodSignal:
    """What a watch event says about one worker pod: its pool, and where it serves (None: not serving)."""

    pool: PoolRef
    pod: str
    serving_at: str | None


def pod_signal(pod: Mapping[str, Any], deleted: bool = False) -> PodSignal | None:
    """The signal of one pod event; None for a pod no ComfyUIWorker controls (nothing to register).

    A deleted pod (watch event DELETED) serves nowhere, whatever its last status said.
    """
    meta = pod.get("metadata") or {}
    owner = next((ref for ref in meta.get("ownerReferences") or []
                  if ref.get("controller") and ref.get("kind") == WORKER_KIND and ref.get("apiVersion") == API_VERSION),
                 None)
    if owner is None or not meta.get("namespace") or not meta.get("name"):
        return None
    pool = PoolRef(meta["namespace"], str((meta.get("labels") or {}).get(LABEL_POOL) or owner.get("name")),
                   str(owner.get("uid")))
    observed = observe_pod(pod, DEFAULT_PORT)
    serving = not deleted and observed.serving and observed.ip is not None
    return PodSignal(pool, observed.name, endpoint_url(observed.ip, observed.port) if serving and observed.ip else None)


class ReadinessTracker:
    """The serving state of every worker pod as last seen on the watch: says which events change it.

    A pod first seen not serving (just created) changes nothing: there is nothing to publish yet. A pod
    first seen serving (an operator restart's initial listing) does: it may not be published yet.
    """

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], str | None] = {}

    def changed(self, signal: PodSignal, deleted: bool = False) -> bool:
        """Record the signal; True when the pod started or stopped serving, or serves elsewhere now."""
        key = (signal.pool.namespace, signal.pod)
        before = self._seen.get(key)
        if deleted:
            self._seen.pop(key, None)
        else:
            self._seen[key] = signal.serving_at
        return before != signal.serving_at

    def __len__(self) -> int:
        return len(self._seen)
