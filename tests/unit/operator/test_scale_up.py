"""The wake-up scale-up path: create-only decisions, the views it builds without probes, its filter."""

from __future__ import annotations

from typing import Any

import pytest

from comfyfleet.operator import main, scaling
from comfyfleet.operator.models import ComfyUIWorkerSpec
from comfyfleet.operator.pods import ObservedPod
from comfyfleet.operator.scale_up import scale_up_decision, wake_views, worth_a_look
from comfyfleet.operator.scaling import PodView
from comfyfleet.settings import OperatorSettings

NOW = 1_000_000.0


def manual(replicas: int) -> ComfyUIWorkerSpec:
    return ComfyUIWorkerSpec(image="x", replicas=replicas)


def auto(min_r: int = 1, max_r: int = 4, per: int = 1, idle: int = 300) -> ComfyUIWorkerSpec:
    autoscaling = {"enabled": True, "minReplicas": min_r, "maxReplicas": max_r, "targetQueuePerWorker": per,
                   "scaleDownIdleSeconds": idle}
    return ComfyUIWorkerSpec.model_validate({"image": "x", "replicas": 1, "autoscaling": autoscaling})


def idle(name: str, idle_for: float = 1_000) -> PodView:
    return PodView(name, ready=True, busy=False, idle_since=NOW - idle_for, created=NOW - 10_000)


def busy(name: str) -> PodView:
    return PodView(name, ready=True, busy=True, idle_since=None, created=NOW - 10_000)


def starting(name: str) -> PodView:
    return PodView(name, ready=False, busy=False, idle_since=None, created=NOW - 1)


def dead(name: str) -> PodView:
    return PodView(name, ready=False, busy=False, idle_since=None, created=NOW - 100, failed=True)


# (case, spec, queue depth, pods, pods to create)
CASES: list[tuple[str, ComfyUIWorkerSpec, int, list[PodView], int]] = [
    ("burst from one idle pod", auto(max_r=4), 8, [idle("a")], 3),
    ("burst from zero", auto(min_r=0, max_r=4), 2, [], 2),
    ("never past maxReplicas", auto(max_r=3), 50, [idle("a"), busy("b")], 1),
    ("already at max", auto(max_r=2), 50, [busy("a"), busy("b")], 0),
    ("busy pods count toward demand", auto(max_r=10), 1, [busy("a"), busy("b")], 1),
    ("starting pods count as capacity", auto(max_r=4), 3, [idle("a"), starting("b"), starting("c")], 0),
    ("target per worker divides", auto(min_r=0, max_r=10, per=4), 9, [], 3),
    ("dead pod does not count as capacity", auto(max_r=4), 2, [idle("a"), dead("b")], 1),
    ("empty queue: nothing", auto(min_r=1), 0, [idle("a")], 0),
    ("manual pool never scales here", manual(5), 10, [idle("a")], 0),
    # A lull with more pods than the queue wants: the timer decides when idle pods go, never this path.
    ("scale-down is left to the timer", auto(min_r=0, max_r=4), 0, [idle("a", 10_000), idle("b", 10_000)], 0),
    ("over maxReplicas: nothing removed", auto(max_r=1), 5, [idle("a"), idle("b"), idle("c")], 0),
]


@pytest.mark.parametrize(("case", "spec", "depth", "pods", "create"), CASES, ids=[c[0] for c in CASES])
def test_scale_up_decision(case: str, spec: ComfyUIWorkerSpec, depth: int, pods: list[PodView], create: int) -> None:
    decision = scale_up_decision(spec, depth, pods, NOW)
    assert decision.create == create, decision.reason
    assert decision.remove == () and decision.replace == ()
    assert decision.desired == decision.current + create


@pytest.mark.parametrize(("case", "spec", "depth", "pods", "create"), CASES, ids=[c[0] for c in CASES])
def test_never_creates_more_than_the_timer_would(
    case: str, spec: ComfyUIWorkerSpec, depth: int, pods: list[PodView], create: int
) -> None:
    """The wake-up creates exactly the timer's creations for the same inputs (autoscaled pools), or none."""
    timer = scaling.decide_scale(spec, depth, pods, NOW)
    assert scale_up_decision(spec, depth, pods, NOW).create == (timer.create if spec.autoscaling.enabled else 0)


def test_reason_names_the_wake_up() -> None:
    decision = scale_up_decision(auto(max_r=4), 8, [idle("a")], NOW)
    assert decision.reason.startswith("on a queue wake-up: autoscaling: ceil((queued 8 + busy 0) / 1)")
    assert "scaling up 1 -> 4" in decision.reason


def observed(name: str, *, ready: bool = True, dead: bool = False, terminating: bool = False) -> ObservedPod:
    return ObservedPod(name=name, ip="10.0.0.1" if ready else None, ready=ready, dead=dead, terminating=terminating,
                       created=NOW - 5, spec_hash=None, port=8188)


def test_wake_views_leave_out_terminating_and_mark_dead_and_busy() -> None:
    pods = [observed("a"), observed("b", ready=False), observed("c", terminating=True), observed("d", dead=True)]
    views = {v.name: v for v in wake_views(pods, busy={"a"})}
    assert set(views) == {"a", "b", "d"}
    assert views["a"].busy and views["a"].ready and not views["a"].failed
    assert not views["b"].busy and not views["b"].ready
    assert views["d"].failed
    assert all(v.idle_since is None and v.created == NOW - 5 for v in views.values())


# (case, spec, queue depth, last status, look?)
LOOKS: list[tuple[str, ComfyUIWorkerSpec, int, dict[str, Any] | None, bool]] = [
    ("new pool without status", auto(), 1, None, True),
    ("status without replicas yet", auto(), 1, {"phase": "Pending"}, True),
    ("more work than pods", auto(max_r=4), 3, {"replicas": 1, "busyReplicas": 0}, True),
    ("busy pods add to the work", auto(max_r=4), 1, {"replicas": 2, "busyReplicas": 2}, True),
    ("enough pods", auto(max_r=4), 2, {"replicas": 2, "busyReplicas": 0}, False),
    ("at maxReplicas", auto(max_r=2), 40, {"replicas": 2, "busyReplicas": 2}, False),
    ("nothing queued", auto(), 0, None, False),
    ("manual pool", manual(3), 9, None, False),
]


@pytest.mark.parametrize(("case", "spec", "depth", "status", "look"), LOOKS, ids=[c[0] for c in LOOKS])
def test_worth_a_look(case: str, spec: ComfyUIWorkerSpec, depth: int, status: dict[str, Any] | None,
                      look: bool) -> None:
    assert worth_a_look(spec, depth, status) is look


def test_reaction_is_registered_as_a_startup_activity() -> None:
    registry = main.build_registry(OperatorSettings())
    activities = {h.id for h in registry._activities.get_all_handlers()}  # kopf has no public listing
    assert {"scale_up_reaction", "operator_cleanup"} <= activities


def test_reaction_settings_defaults_and_bounds() -> None:
    settings = OperatorSettings()
    assert settings.scale_up_on_wake and 0 < settings.scale_up_debounce_seconds <= 0.1
    with pytest.raises(ValueError, match="scale_up_debounce_seconds"):
        OperatorSettings(scale_up_debounce_seconds=-1)
