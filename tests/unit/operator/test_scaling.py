"""Scaling decisions: manual mode, autoscaling bounds, idle timers, never removing a busy pod."""

from __future__ import annotations

from typing import Any

import pytest

from comfyfleet.operator import scaling
from comfyfleet.operator.models import ComfyUIWorkerSpec, ComfyUIWorkerStatus, WorkerPodStatus
from comfyfleet.operator.scaling import PodView

NOW = 1_000_000.0
IDLE = 300  # scaleDownIdleSeconds of the autoscaling specs below


def manual(replicas: int) -> ComfyUIWorkerSpec:
    return ComfyUIWorkerSpec(image="x", replicas=replicas)


def auto(min_r: int = 0, max_r: int = 4, per: int = 1, idle: int = IDLE) -> ComfyUIWorkerSpec:
    return ComfyUIWorkerSpec.model_validate(
        {
            "image": "x",
            "replicas": 1,
            "autoscaling": {
                "enabled": True,
                "minReplicas": min_r,
                "maxReplicas": max_r,
                "targetQueuePerWorker": per,
                "scaleDownIdleSeconds": idle,
            },
        }
    )


def idle_pod(name: str, idle_for: float, ready: bool = True) -> PodView:
    return PodView(name, ready=ready, busy=False, idle_since=NOW - idle_for, created=NOW - 10_000)


def busy_pod(name: str) -> PodView:
    return PodView(name, ready=True, busy=True, idle_since=None, created=NOW - 10_000)


def new_pod(name: str, age: float, ready: bool = False) -> PodView:
    return PodView(name, ready=ready, busy=False, idle_since=None, created=NOW - age)


# (case, spec, queue depth, pods, expected desired, expected removed pods, expected created)
CASES: list[tuple[str, ComfyUIWorkerSpec, int, list[PodView], int, list[str], int]] = [
    ("manual steady", manual(2), 5, [idle_pod("a", 1), busy_pod("b")], 2, [], 0),
    ("manual up ignores queue", manual(3), 0, [idle_pod("a", 1)], 3, [], 2),
    ("manual down skips idle timer", manual(1), 0, [idle_pod("a", 1), idle_pod("b", 5)], 1, ["b"], 0),
    ("manual down never removes busy", manual(0), 0, [busy_pod("a"), idle_pod("b", 1)], 1, ["b"], 0),
    ("manual down prefers not ready", manual(1), 0, [idle_pod("a", 900), new_pod("b", 1)], 1, ["b"], 0),
    ("scale from zero", auto(min_r=0), 3, [], 3, [], 3),
    ("one job scales zero to one", auto(min_r=0), 1, [], 1, [], 1),
    ("up to max only", auto(max_r=4), 50, [busy_pod("a")], 4, [], 3),
    ("busy counts toward demand", auto(), 1, [busy_pod("a"), busy_pod("b")], 3, [], 1),
    ("target per worker divides", auto(per=2), 5, [], 3, [], 3),
    ("min floor with empty queue", auto(min_r=2), 0, [], 2, [], 2),
    ("recently idle pod is kept", auto(min_r=0), 0, [idle_pod("a", IDLE - 1)], 1, [], 0),
    ("idle long enough goes to zero", auto(min_r=0), 0, [idle_pod("a", IDLE)], 0, ["a"], 0),
    ("busy pod never removed at zero", auto(min_r=0), 0, [busy_pod("a")], 1, [], 0),
    (
        "longest idle removed first",
        auto(min_r=1),
        0,
        [idle_pod("a", 400), idle_pod("b", 900), idle_pod("c", 600)],
        1,
        ["b", "c"],
        0,
    ),
    (
        "only timer-expired pods removed",
        auto(min_r=0),
        0,
        [idle_pod("a", 10), idle_pod("b", 900), busy_pod("c")],
        2,
        ["b"],
        0,
    ),
    (
        "not ready before ready when both expired",
        auto(min_r=1),
        0,
        [idle_pod("a", 900), new_pod("b", 400)],
        1,
        ["b"],
        0,
    ),
    ("fresh starting pod is kept", auto(min_r=0), 0, [new_pod("a", 5)], 1, [], 0),
    (
        "above max removes idle pods without timer",
        auto(min_r=0, max_r=2),
        5,
        [busy_pod("a"), idle_pod("b", 1), idle_pod("c", 2), new_pod("d", 1)],
        2,
        ["d", "c"],
        0,
    ),
    (
        "above max still keeps busy pods",
        auto(min_r=0, max_r=1),
        0,
        [busy_pod("a"), busy_pod("b"), idle_pod("c", 1)],
        2,
        ["c"],
        0,
    ),
    (
        "queue keeps idle pods busy-ready",
        auto(min_r=0),
        2,
        [idle_pod("a", 900), idle_pod("b", 900)],
        2,
        [],
        0,
    ),
]


@pytest.mark.parametrize(
    ("case", "spec", "queue", "pods", "desired", "removed", "created"), CASES, ids=[c[0] for c in CASES]
)
def test_decide_scale(
    case: str,
    spec: ComfyUIWorkerSpec,
    queue: int,
    pods: list[PodView],
    desired: int,
    removed: list[str],
    created: int,
) -> None:
    decision = scaling.decide_scale(spec, queue, pods, NOW)
    assert (decision.desired, list(decision.remove), decision.create) == (desired, removed, created)
    busy = {p.name for p in pods if p.busy}
    assert not busy & set(decision.remove), "a busy pod was chosen for removal"
    assert decision.current - len(decision.remove) + decision.create == decision.desired
    assert decision.reason


@pytest.mark.parametrize(
    ("case", "spec", "queue", "pods", "desired", "_r", "_c"), CASES, ids=[c[0] for c in CASES]
)
def test_desired_replicas_agrees_with_decide_scale(
    case: str, spec: ComfyUIWorkerSpec, queue: int, pods: list[PodView], desired: int, _r: Any, _c: Any
) -> None:
    busy = sum(p.busy for p in pods)
    idle = {p.name: p.idle_reference for p in pods if not p.busy}
    assert scaling.desired_replicas(spec, queue, busy, len(pods), idle, NOW) == desired


def test_idle_timer_releases_a_pod_once_it_expires() -> None:
    spec = auto(min_r=0)
    pod = PodView("a", ready=True, busy=False, idle_since=NOW, created=NOW - 5000)
    assert scaling.decide_scale(spec, 0, [pod], NOW + IDLE - 0.5).remove == ()
    assert scaling.decide_scale(spec, 0, [pod], NOW + IDLE).remove == ("a",)


def test_scale_to_zero_and_back() -> None:
    spec = auto(min_r=0, max_r=3)
    gone = scaling.decide_scale(spec, 0, [idle_pod("a", IDLE + 1)], NOW)
    assert gone.desired == 0 and gone.remove == ("a",)
    back = scaling.decide_scale(spec, 2, [], NOW + 1)
    assert back.desired == 2 and back.create == 2


def test_autoscaling_ignores_spec_replicas() -> None:
    spec = auto(min_r=0).model_copy(update={"replicas": 7})
    assert scaling.target_replicas(spec, 0, 0) == 0
    assert scaling.target_replicas(spec, 2, 1) == 3


def test_failed_pods_are_replaced_without_counting_as_capacity() -> None:
    failed = PodView("f", ready=False, busy=False, idle_since=None, created=NOW - 5, failed=True)
    decision = scaling.decide_scale(manual(2), 0, [failed, idle_pod("a", 1)], NOW)
    assert decision.replace == ("f",) and decision.remove == () and decision.create == 1
    assert "replacing failed pods f" in decision.reason and decision.changes


def test_pods_to_remove_never_picks_busy_and_honours_count() -> None:
    pods = [busy_pod("a"), idle_pod("b", 50), idle_pod("c", 500), new_pod("d", 1000)]
    assert scaling.pods_to_remove(pods, 10, NOW) == ["d", "c", "b"]
    assert scaling.pods_to_remove(pods, 1, NOW, min_idle_seconds=100) == ["d"]
    assert scaling.pods_to_remove(pods, 0, NOW) == []


def test_pods_to_remove_breaks_ties_by_name() -> None:
    pods = [idle_pod("b", 100), idle_pod("a", 100)]
    assert scaling.pods_to_remove(pods, 1, NOW) == ["a"]


def test_reason_explains_a_held_back_scale_down() -> None:
    decision = scaling.decide_scale(auto(min_r=0), 0, [busy_pod("a"), idle_pod("b", 5)], NOW)
    assert decision.target == 1 and decision.desired == 2
    assert "holding 1 pod(s)" in decision.reason and "ceil((queued 0 + busy 1) / 1)" in decision.reason
    assert not decision.changes


@pytest.mark.parametrize(
    ("desired", "replicas", "ready", "phase"),
    [
        (0, 0, 0, "ScaledToZero"),
        (2, 1, 1, "Scaling"),
        (1, 2, 1, "Scaling"),
        (2, 2, 2, "Ready"),
        (2, 2, 0, "Pending"),
        (3, 3, 1, "Degraded"),
    ],
)
def test_worker_phase(desired: int, replicas: int, ready: int, phase: str) -> None:
    assert scaling.worker_phase(desired, replicas, ready) == phase


def conds_by_type(conditions: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in conditions}


def test_worker_conditions_track_availability_and_scaling() -> None:
    first = conds_by_type(
        scaling.worker_conditions(None, desired=2, replicas=1, ready=0, reason="r", now=NOW, generation=3)
    )
    assert first["Available"]["status"] == "False" and first["Available"]["reason"] == "NoReadyPods"
    assert first["Scaling"]["reason"] == "ScalingUp" and first["Ready"]["status"] == "False"
    assert first["Ready"]["observedGeneration"] == 3
    later = conds_by_type(
        scaling.worker_conditions(
            list(first.values()), desired=2, replicas=2, ready=2, reason="steady", now=NOW + 60
        )
    )
    assert later["Available"]["status"] == "True" and later["Ready"]["status"] == "True"
    assert later["Scaling"]["status"] == "False"
    assert later["Ready"]["lastTransitionTime"] != first["Ready"]["lastTransitionTime"]


def test_worker_status_counts_pods_and_validates_as_the_status_model() -> None:
    decision = scaling.decide_scale(manual(3), 4, [busy_pod("p1"), idle_pod("p2", 1)], NOW)
    workers = [
        WorkerPodStatus(pod="p2", ip="10.0.0.2", state="Idle"),
        WorkerPodStatus(pod="p1", ip="10.0.0.1", state="Busy", current_job="job-1"),
    ]
    status = scaling.worker_status(
        selector="app.kubernetes.io/name=comfyui-worker,comfyfleet.io/pool=w",
        decision=decision,
        workers=workers,
        queue_depth=4,
        previous=None,
        generation=2,
        now=NOW,
    )
    assert status["replicas"] == 2 and status["desiredReplicas"] == 3
    assert status["readyReplicas"] == 2 and status["busyReplicas"] == 1 and status["queueDepth"] == 4
    assert status["phase"] == "Scaling" and status["observedGeneration"] == 2
    assert [w["pod"] for w in status["workers"]] == ["p1", "p2"]
    assert status["workers"][0]["currentJob"] == "job-1"
    assert status["lastScaleTime"] == "1970-01-12T13:46:40Z"
    parsed = ComfyUIWorkerStatus.model_validate(status)
    assert parsed.busy_replicas == 1


def test_worker_status_keeps_last_scale_time_when_nothing_changes() -> None:
    decision = scaling.decide_scale(manual(1), 0, [idle_pod("p1", 1)], NOW)
    status = scaling.worker_status(
        selector="s",
        decision=decision,
        workers=[WorkerPodStatus(pod="p1", state="Idle")],
        queue_depth=0,
        previous={"lastScaleTime": "2024-01-01T00:00:00Z"},
        generation=None,
        now=NOW,
    )
    assert status["lastScaleTime"] == "2024-01-01T00:00:00Z" and status["phase"] == "Ready"
    assert "observedGeneration" not in status


@pytest.mark.parametrize(("count", "largest", "sizes"), [
    (0, 16, []),
    (1, 16, [1]),
    (3, 16, [1, 2]),
    (5, 16, [1, 2, 2]),
    (200, 16, [1, 2, 4, 8] + [16] * 11 + [9]),
    (7, 1, [1] * 7),
])
def test_pods_are_created_in_slow_start_batches(count: int, largest: int, sizes: list[int]) -> None:
    assert scaling.slow_start_batches(count, largest) == sizes
    assert sum(sizes) == count


def test_slow_start_needs_a_batch_of_at_least_one() -> None:
    with pytest.raises(ValueError, match="largest"):
        scaling.slow_start_batches(5, 0)
