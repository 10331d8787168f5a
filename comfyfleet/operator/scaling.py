"""Pure scaling decisions and status for a ComfyUIWorker pool (no I/O; the operator applies them).

Rules:
- Manual mode (autoscaling.enabled false): the target is spec.replicas (set directly or through the
  scale subresource, `kubectl scale comfyuiworker/NAME --replicas=N`).
- Autoscaling: target = clamp(ceil((queue_depth + busy) / targetQueuePerWorker), minReplicas,
  maxReplicas); spec.replicas is ignored. minReplicas 0 lets an idle pool scale to zero, and a
  queued job scales it back up.
- Up is immediate: the missing pods are created on the decision that sees them missing.
- Down removes only pods that are not busy. Under autoscaling a pod must also have been idle for
  scaleDownIdleSeconds (since its last job ended, or since it was created if it never ran one), so
  a brief lull does not throw away a warm GPU pod; pods above maxReplicas (the SRE lowered it)
  and manual scale-downs skip the idle timer but still never touch a busy pod. A busy pod that
  should go stays until its job ends, and the next decision removes it.
- Which pods go: failed ones are always replaced; among the rest, not-ready pods first, then the
  longest idle (ties by name, so decisions are deterministic).

Times are epoch seconds (float) throughout; `now` is always passed in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from comfyfleet.operator.models import (
    ComfyUIWorkerSpec,
    WorkerPhase,
    WorkerPodStatus,
    rfc3339,
    set_condition,
)


@dataclass(frozen=True)
class PodView:
    """What scaling needs to know about one worker pod.

    Attributes:
        name: pod name.
        ready: ComfyUI answers its probe (pod Ready and the operator's own probe passes).
        busy: the dispatch registry says the pod is running a job.
        idle_since: when its last job ended (epoch s); None if it never ran one.
        created: pod creation time (epoch s).
        failed: the pod is beyond recovery (phase Failed, or evicted); it is replaced, not scaled.
    """

    name: str
    ready: bool
    busy: bool
    idle_since: float | None
    created: float
    failed: bool = False

    @property
    def idle_reference(self) -> float:
        """The moment this pod's idle timer started: its last job's end, else its creation."""
        return self.idle_since if self.idle_since is not None else self.created


@dataclass(frozen=True)
class ScaleDecision:
    """What to do with a pool now, and why (the reason goes into events and logs)."""

    target: int  # replicas the rules ask for (spec.replicas or the autoscaling formula)
    desired: int  # replicas to converge to now: target, held back by busy pods and idle timers
    current: int  # live (not failed) pods seen
    create: int  # pods to create now
    remove: tuple[str, ...]  # pods to delete now (scale-down), most removable first
    replace: tuple[str, ...] = field(default=())  # failed pods to delete; `create` already replaces them
    reason: str = ""

    @property
    def changes(self) -> bool:
        """True when the decision creates or deletes anything."""
        return bool(self.create or self.remove or self.replace)


def target_replicas(spec: ComfyUIWorkerSpec, queue_depth: int, busy: int) -> int:
    """Replicas the rules ask for, before idle timers and busy pods hold a scale-down back."""
    auto = spec.autoscaling
    if not auto.enabled:
        return spec.replicas
    wanted = math.ceil(max(queue_depth + busy, 0) / auto.target_queue_per_worker)
    upper = auto.max_replicas if auto.max_replicas is not None else max(wanted, auto.min_replicas)
    return min(max(wanted, auto.min_replicas), upper)


def scale_down_idle_seconds(spec: ComfyUIWorkerSpec) -> float:
    """How long a pod must be idle before a scale-down may remove it (0 in manual mode)."""
    return float(spec.autoscaling.scale_down_idle_seconds) if spec.autoscaling.enabled else 0.0


def desired_replicas(
    spec: ComfyUIWorkerSpec,
    queue_depth: int,
    busy: int,
    current: int,
    idle_since: Mapping[str, float],
    now: float,
) -> int:
    """Replicas the pool should have right now.

    Args:
        spec: the pool's spec (manual replicas or autoscaling settings).
        queue_depth: jobs waiting for this pool.
        busy: pods running a job.
        current: live pods (failed ones excluded), ready or not.
        idle_since: every live pod that is NOT busy -> when its idle timer started
            (`PodView.idle_reference`: last job end, else creation). Busy pods are left out.
        now: epoch seconds.

    Returns the target when scaling up or steady; when scaling down, no fewer than the pods that
    cannot be removed yet (busy, or idle for less than scaleDownIdleSeconds).
    """
    target = target_replicas(spec, queue_depth, busy)
    if target >= current:
        return target
    min_idle = scale_down_idle_seconds(spec)
    removable = sum(1 for since in idle_since.values() if now - since >= min_idle)
    max_replicas = spec.autoscaling.max_replicas
    if spec.autoscaling.enabled and max_replicas is not None and current > max_replicas:
        # Above maxReplicas is a configuration change, not a lull: no idle timer for the excess.
        removable = max(removable, min(current - max_replicas, len(idle_since)))
    return max(target, current - removable)


def pods_to_remove(
    pods: Sequence[PodView], count: int, now: float, min_idle_seconds: float = 0.0
) -> list[str]:
    """Names of up to `count` pods to delete for a scale-down, most removable first.

    Never a busy pod; only pods idle for at least `min_idle_seconds` (failed pods always qualify).
    Order: failed, then not ready, then longest idle, then name.
    """
    if count <= 0:
        return []
    candidates = [p for p in pods if not p.busy and (p.failed or now - p.idle_reference >= min_idle_seconds)]
    candidates.sort(key=lambda p: (not p.failed, p.ready, p.idle_reference, p.name))
    return [p.name for p in candidates[:count]]


def decide_scale(
    spec: ComfyUIWorkerSpec, queue_depth: int, pods: Sequence[PodView], now: float
) -> ScaleDecision:
    """The full scaling decision for one reconcile pass of a pool.

    Args:
        spec: the pool's spec.
        queue_depth: jobs waiting for this pool (from the dispatch queue).
        pods: every existing, non-terminating pod of the pool.
        now: epoch seconds.
    """
    failed = tuple(sorted(p.name for p in pods if p.failed))
    live = [p for p in pods if not p.failed]
    busy = sum(1 for p in live if p.busy)
    current = len(live)
    idle = {p.name: p.idle_reference for p in live if not p.busy}
    target = target_replicas(spec, queue_depth, busy)
    desired = desired_replicas(spec, queue_depth, busy, current, idle, now)

    remove: list[str] = []
    if desired < current:
        to_remove = current - desired
        max_replicas = spec.autoscaling.max_replicas
        over = max(0, current - max_replicas) if spec.autoscaling.enabled and max_replicas is not None else 0
        remove = pods_to_remove(live, min(over, to_remove), now)
        rest = [p for p in live if p.name not in remove]
        remove += pods_to_remove(rest, to_remove - len(remove), now, scale_down_idle_seconds(spec))
    create = max(0, desired - current)
    reason = _reason(spec, queue_depth, busy, current, target, desired, create, remove, failed)
    return ScaleDecision(target, desired, current, create, tuple(remove), failed, reason)


def _reason(
    spec: ComfyUIWorkerSpec,
    queue_depth: int,
    busy: int,
    current: int,
    target: int,
    desired: int,
    create: int,
    remove: Sequence[str],
    failed: Sequence[str],
) -> str:
    auto = spec.autoscaling
    if auto.enabled:
        basis = (
            f"autoscaling: ceil((queued {queue_depth} + busy {busy}) / {auto.target_queue_per_worker})"
            f" within [{auto.min_replicas}, {auto.max_replicas}] = {target}"
        )
    else:
        basis = f"manual: spec.replicas = {target}"
    parts = [basis]
    if failed:
        parts.append(f"replacing failed pods {', '.join(failed)}")
    if create:
        parts.append(f"scaling up {current} -> {desired}")
    if remove:
        parts.append(f"scaling down {current} -> {desired}: removing idle {', '.join(remove)}")
    if desired > target:
        held = desired - target
        why = "busy or not idle long enough" if auto.enabled else "busy"
        parts.append(f"holding {held} pod(s) that are {why}")
    if not (failed or create or remove or desired > target):
        parts.append(f"steady at {current}")
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------
# Status


def worker_phase(desired: int, replicas: int, ready: int) -> WorkerPhase:
    """Phase of a pool from its counts (Failed, for an invalid spec, is set by the handler)."""
    if desired == 0 and replicas == 0:
        return "ScaledToZero"
    if replicas != desired:
        return "Scaling"
    if ready >= desired:
        return "Ready"
    if ready == 0:
        return "Pending"
    return "Degraded"


def worker_conditions(
    previous: Sequence[Mapping[str, Any]] | None,
    *,
    desired: int,
    replicas: int,
    ready: int,
    reason: str,
    now: datetime | float,
    generation: int | None = None,
) -> list[dict[str, Any]]:
    """Conditions of a pool: Available (some pod serves), Ready (all desired pods ready), Scaling."""
    conds = [dict(c) for c in previous or []]
    if ready > 0:
        conds = set_condition(
            conds, "Available", "True", "PodsReady", f"{ready} pod(s) serving", now, generation
        )
    elif desired == 0:
        msg = "scaled to zero; a queued job scales the pool up"
        conds = set_condition(conds, "Available", "False", "ScaledToZero", msg, now, generation)
    else:
        conds = set_condition(
            conds, "Available", "False", "NoReadyPods", "no pod is ready yet", now, generation
        )
    counts = f"{ready}/{desired} pods ready"
    if ready >= desired and replicas == desired:
        conds = set_condition(conds, "Ready", "True", "AllReplicasReady", counts, now, generation)
    else:
        conds = set_condition(conds, "Ready", "False", "ReplicasNotReady", counts, now, generation)
    if replicas < desired:
        conds = set_condition(conds, "Scaling", "True", "ScalingUp", reason, now, generation)
    elif replicas > desired:
        conds = set_condition(conds, "Scaling", "True", "ScalingDown", reason, now, generation)
    else:
        conds = set_condition(conds, "Scaling", "False", "Stable", reason, now, generation)
    return conds


def worker_status(
    *,
    selector: str,
    decision: ScaleDecision,
    workers: Sequence[WorkerPodStatus],
    queue_depth: int,
    previous: Mapping[str, Any] | None,
    generation: int | None,
    now: datetime | float,
) -> dict[str, Any]:
    """The status dict of a ComfyUIWorker after a reconcile pass (camelCase, ready for patch.status).

    Args:
        selector: `builders.selector_for(name)`.
        decision: this pass's scaling decision.
        workers: one entry per existing pod, as the operator sees it now.
        queue_depth: jobs waiting for this pool.
        previous: the current status (conditions and lastScaleTime carry over).
        generation: metadata.generation of the ComfyUIWorker.
        now: datetime or epoch seconds.
    """
    previous = previous or {}
    live = [w for w in workers if w.state != "Terminating"]
    ready = sum(1 for w in live if w.state in ("Idle", "Busy"))
    busy = sum(1 for w in live if w.state == "Busy")
    replicas = len(live)
    status: dict[str, Any] = {
        "phase": worker_phase(decision.desired, replicas, ready),
        "replicas": replicas,
        "desiredReplicas": decision.desired,
        "readyReplicas": ready,
        "busyReplicas": busy,
        "queueDepth": queue_depth,
        "workers": [w.to_k8s() for w in sorted(workers, key=lambda w: w.pod)],
        "conditions": worker_conditions(
            previous.get("conditions"),
            desired=decision.desired,
            replicas=replicas,
            ready=ready,
            reason=decision.reason,
            now=now,
            generation=generation,
        ),
        "selector": selector,
    }
    if generation is not None:
        status["observedGeneration"] = generation
    if decision.create or decision.remove:
        status["lastScaleTime"] = rfc3339(now)
    elif previous.get("lastScaleTime"):
        status["lastScaleTime"] = previous["lastScaleTime"]
    return status


def slow_start_batches(count: int, largest: int) -> list[int]:
    """Sizes of the batches that create count pods: 1, 2, 4, … doubling up to largest, as Kubernetes'
    ReplicaSet controller does ("slow start"), so a create the API refuses fails a small batch, not count calls."""
    if largest < 1:
        raise ValueError(f"largest must be at least 1, not {largest}")
    sizes: list[int] = []
    size = 1
    while sum(sizes) < count:
        sizes.append(min(size, largest, count - sum(sizes)))
        size *= 2
    return sizes
