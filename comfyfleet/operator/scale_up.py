"""Pure decisions of the fast scale-up path: what a queue wake-up may do to an autoscaled pool.

The timer pass (`workers.reconcile_pool`) probes pods, publishes them, scales both ways and writes
status every probe interval. Between two ticks a burst of queued jobs would wait for the next tick;
the operator's reaction (`operator/reaction.py`) answers the dispatch wake-ups instead, with only
the part of the same decision that adds pods:

- only autoscaled pools (a manual pool's size is spec.replicas: an edit reaches the update handler);
- the same `scaling.decide_scale`, fed from what can be read without probing: the pool's live pods
  (terminating ones left out, dead ones counted as failed, as the timer does) and their leases;
- only `create`: nothing is ever removed or replaced here; scale-down, idle timers, replacements
  and status stay on the timer. Pods the fast path cannot judge (unanswering, outdated spec) count
  as live, so it may create fewer pods than the timer would, never more.

No I/O; `now` is always passed in.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from comfyfleet.operator.models import ComfyUIWorkerSpec
from comfyfleet.operator.pods import ObservedPod
from comfyfleet.operator.scaling import PodView, ScaleDecision, decide_scale, target_replicas


def wake_views(pods: Sequence[ObservedPod], busy: Collection[str]) -> list[PodView]:
    """Scaling views of a pool's pods as a wake-up sees them (no probes): terminating pods left out,
    dead pods failed, a pod busy when it holds a lease (busy holds pod names)."""
    return [
        PodView(name=p.name, ready=p.serving, busy=p.name in busy, idle_since=None, created=p.created,
                failed=p.dead)
        for p in pods
        if not p.terminating
    ]


def scale_up_decision(
    spec: ComfyUIWorkerSpec, queue_depth: int, pods: Sequence[PodView], now: float
) -> ScaleDecision:
    """The scale-up part of `decide_scale` for a wake-up: create only, never remove or replace.

    Args:
        spec: the pool's spec; a manual pool never scales here (create 0).
        queue_depth: jobs waiting that this pool can run (`pods.queue_depth`).
        pods: the pool's pods (`wake_views`).
        now: epoch seconds.
    """
    full = decide_scale(spec, queue_depth, pods, now)
    create = full.create if spec.autoscaling.enabled else 0
    desired = full.current + create
    reason = f"on a queue wake-up: {full.reason}" if create else full.reason
    return ScaleDecision(full.target, desired, full.current, create, (), (), reason)


def worth_a_look(spec: ComfyUIWorkerSpec, queue_depth: int, status: Mapping[str, Any] | None) -> bool:
    """Whether a wake-up should read this pool's pods at all (a cheap filter from its last status).

    Only autoscaled pools with work waiting, and only when the target for that work exceeds the
    replicas the last timer pass wrote. A pool without status yet is always looked at. A stale status
    can only cause an unneeded look (the pass then reads the real pods) or defer to the timer.
    """
    if not spec.autoscaling.enabled or queue_depth <= 0:
        return False
    if not status or "replicas" not in status:
        return True
    busy = int(status.get("busyReplicas") or 0)
    return target_replicas(spec, queue_depth, busy) > int(status.get("replicas") or 0)
