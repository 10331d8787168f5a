"""Pure pod observations: reading pods, worker states, idle timers, replacement and queue depth."""

from __future__ import annotations

from typing import Any

from comfyfleet.operator import pods
from comfyfleet.operator.builders import ANNOTATION_SPEC_HASH, build_worker_pod, spec_hash
from comfyfleet.operator.models import ComfyUIWorkerSpec, ProbeSpec
from comfyfleet.operator.pods import EndpointHealth, ObservedPod

NOW = 1_700_000_000.0
SPEC = ComfyUIWorkerSpec(image="x", probe=ProbeSpec(failure_threshold=2))


def k8s_pod(name: str = "pool-abcde", *, ready: bool = True, ip: str | None = "10.0.0.7", phase: str = "Running",
            deleting: bool = False, spec: ComfyUIWorkerSpec = SPEC) -> dict[str, Any]:
    pod = build_worker_pod("pool", "ns", spec, name, "owner-uid")
    pod["metadata"]["creationTimestamp"] = "2023-11-14T22:13:20Z"
    if deleting:
        pod["metadata"]["deletionTimestamp"] = "2023-11-14T22:20:00Z"
    status: dict[str, Any] = {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    if ip:
        status["podIP"] = ip
    pod["status"] = status
    return pod


def observed(**kw: Any) -> ObservedPod:
    return pods.observe_pod(k8s_pod(**kw), 8188)


def test_endpoint_identity_and_url() -> None:
    assert pods.endpoint_id_for("team-a", "sdxl-x7k2p") == "k8s:team-a/sdxl-x7k2p"
    assert pods.endpoint_url("10.1.2.3", 8188) == "http://10.1.2.3:8188"
    assert pods.endpoint_url("fd00::7", 8188) == "http://[fd00::7]:8188"


def test_observe_pod_reads_readiness_ip_phase_and_hash() -> None:
    pod = observed()
    assert (pod.name, pod.ip, pod.ready, pod.dead, pod.terminating, pod.port) == (
        "pool-abcde", "10.0.0.7", True, False, False, 8188)
    assert pod.serving and pod.spec_hash == spec_hash(SPEC)
    assert pod.created == 1_700_000_000.0
    assert not observed(ip=None).ready  # Ready without an IP cannot be reached
    assert not observed(ready=False).serving
    assert observed(phase="Failed").dead
    assert not observed(deleting=True).serving


def test_owned_by_needs_the_controller_reference() -> None:
    pod = k8s_pod()
    assert pods.owned_by(pod, "owner-uid")
    assert not pods.owned_by(pod, "someone-else")
    pod["metadata"]["ownerReferences"][0]["controller"] = False
    assert not pods.owned_by(pod, "owner-uid")


def test_worker_state() -> None:
    healthy = EndpointHealth(healthy=True, ever_seen=True)
    failing = EndpointHealth(healthy=False, consecutive_failures=3, ever_seen=True)
    assert pods.worker_state(observed(ready=False), EndpointHealth(), busy=False) == "Starting"
    assert pods.worker_state(observed(), EndpointHealth(), busy=False) == "Starting"  # not probed yet
    assert pods.worker_state(observed(), healthy, busy=False) == "Idle"
    assert pods.worker_state(observed(), healthy, busy=True) == "Busy"
    assert pods.worker_state(observed(), failing, busy=False) == "Unhealthy"
    assert pods.worker_state(observed(phase="Failed"), healthy, busy=True) == "Unhealthy"
    assert pods.worker_state(observed(deleting=True), healthy, busy=True) == "Terminating"


def test_unanswering_uses_the_liveness_threshold() -> None:
    probe = ProbeSpec(failure_threshold=2)  # liveness gives up after 2 x 3 = 6 failures
    assert not pods.unanswering(EndpointHealth(consecutive_failures=5), probe)
    assert pods.unanswering(EndpointHealth(consecutive_failures=6), probe)


def test_needs_replacement() -> None:
    ok, current = EndpointHealth(healthy=True, ever_seen=True), spec_hash(SPEC)
    dead_comfy = EndpointHealth(consecutive_failures=6, ever_seen=True)
    assert not pods.needs_replacement(observed(), ok, SPEC.probe, busy=False, current_hash=current)
    assert pods.needs_replacement(observed(phase="Failed"), ok, SPEC.probe, busy=True, current_hash=current)
    assert pods.needs_replacement(observed(), dead_comfy, SPEC.probe, busy=True, current_hash=current)
    outdated = observed(spec=ComfyUIWorkerSpec(image="older"))
    assert pods.needs_replacement(outdated, ok, SPEC.probe, busy=False, current_hash=current)
    assert not pods.needs_replacement(outdated, ok, SPEC.probe, busy=True, current_hash=current)  # after its job


def test_last_job_at_records_the_end_of_a_job() -> None:
    assert pods.last_job_at(None, busy=False, now=NOW) is None
    assert pods.last_job_at({"state": "Busy"}, busy=True, now=NOW) is None
    assert pods.last_job_at({"state": "Busy"}, busy=False, now=NOW) == NOW
    before = {"state": "Idle", "lastJobAt": "2023-11-14T22:00:00Z"}
    assert pods.last_job_at(before, busy=False, now=NOW) == pods.parse_time("2023-11-14T22:00:00Z")


def test_idle_since_falls_back_to_the_last_assignment() -> None:
    assert pods.idle_since(None, EndpointHealth()) is None
    assert pods.idle_since(None, EndpointHealth(last_assigned_at=NOW - 50)) == NOW - 50
    assert pods.idle_since(NOW - 10, EndpointHealth(last_assigned_at=NOW - 50)) == NOW - 10


def test_queue_depth_counts_jobs_for_any_pool() -> None:
    queued = {"sdxl": 3, "flux": 2, None: 4}
    assert pods.queue_depth(queued, "sdxl") == 7
    assert pods.queue_depth(queued, "sim") == 4
    assert pods.queue_depth({}, "sim") == 0


def test_stale_endpoints() -> None:
    assert pods.stale_endpoints(["k8s:a/p1", "k8s:a/p2"], ["k8s:a/p2", "k8s:a/p3"]) == ["k8s:a/p1"]


def test_assess_pool_views_and_entries() -> None:
    ready, starting = observed(name="pool-aaaaa"), observed(name="pool-bbbbb", ready=False)
    dead, going = observed(name="pool-ccccc", phase="Failed"), observed(name="pool-ddddd", deleting=True)
    health = {"pool-aaaaa": EndpointHealth(healthy=True, ever_seen=True)}
    previous = {"workers": [{"pod": "pool-aaaaa", "state": "Busy"}]}
    views, entries = pods.assess_pool(SPEC, [ready, starting, dead, going], health, {}, previous, NOW)
    by_name = {v.name: v for v in views}
    assert set(by_name) == {"pool-aaaaa", "pool-bbbbb", "pool-ccccc"}  # terminating pods are not scaled
    assert by_name["pool-aaaaa"].ready and by_name["pool-aaaaa"].idle_since == NOW  # its job just ended
    assert not by_name["pool-bbbbb"].ready
    assert by_name["pool-ccccc"].failed
    assert {n: e.state for n, e in entries.items()} == {
        "pool-aaaaa": "Idle", "pool-bbbbb": "Starting", "pool-ccccc": "Unhealthy", "pool-ddddd": "Terminating"}
    assert entries["pool-aaaaa"].to_k8s()["lastJobAt"] == "2023-11-14T22:13:20Z"


def test_assess_pool_busy_pod_carries_its_job() -> None:
    health = {"pool-aaaaa": EndpointHealth(healthy=True, ever_seen=True)}
    views, entries = pods.assess_pool(SPEC, [observed(name="pool-aaaaa")], health, {"pool-aaaaa": "job-1"}, None, NOW)
    assert views[0].busy and entries["pool-aaaaa"].state == "Busy"
    assert entries["pool-aaaaa"].current_job == "job-1"


def test_after_changes_marks_deleted_and_created() -> None:
    _, entries = pods.assess_pool(SPEC, [observed(name="pool-aaaaa")], {}, {}, None, NOW)
    workers = pods.after_changes(entries, deleted=["pool-aaaaa"], created=["pool-zzzzz"])
    assert [(w.pod, w.state) for w in workers] == [("pool-aaaaa", "Terminating"), ("pool-zzzzz", "Starting")]


def test_spec_hash_annotation_is_read() -> None:
    pod = k8s_pod()
    pod["metadata"]["annotations"][ANNOTATION_SPEC_HASH] = "abc"
    assert pods.observe_pod(pod, 8188).spec_hash == "abc"
