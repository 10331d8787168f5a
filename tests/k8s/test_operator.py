"""The operator against a real kube-apiserver, running as the chart's ServiceAccount with the chart's RBAC.

One `OperatorFleet` per module (Redis, the operator process, two RQ workers, the simulated kubelet);
each test works in its own namespace with its own pool names, so tests never see each other's pods
or jobs. Pools are CPU pools of ComfyUI simulators; the kubelet stand-in gives each pod its own
127.0.0.N address, so the operator and the dispatcher reach "pods" over HTTP exactly as in a cluster.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from comfyfleet.operator.job_spec import JobDefaults, build_job, parse_spec
from tests.k8s.envtest import ControlPlane
from tests.k8s.operator_harness import (
    OperatorFleet,
    apply_yaml,
    kubectl_ok,
    txt2img_job,
    worker_manifest,
)

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(180)]

SAMPLES = Path(__file__).resolve().parents[2] / "crds" / "samples"


@pytest.fixture(scope="module")
def fleet(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorFleet]:
    running = OperatorFleet(control_plane, tmp_path_factory.mktemp("operator-fleet"))
    try:
        yield running
    finally:
        running.stop()


def test_worker_pods_match_spec_and_serve_jobs(fleet: OperatorFleet, namespace: str) -> None:
    """A ComfyUIWorker becomes owned pods shaped by its spec and a headless Service; ready pods run jobs."""
    spec = {
        "replicas": 2,
        "gpu": {"count": 1, "resourceName": "nvidia.com/gpu"},
        "nodeSelector": {"gpu": "l4"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    }
    apply_yaml(fleet.plane, [worker_manifest("serve", **spec)], namespace)
    pods = fleet.wait(lambda: (p := fleet.pods(namespace, "serve")) and len(p) == 2 and p, 20, "2 pods")
    owner = fleet.get("comfyuiworker", "serve", namespace)
    for pod in pods:
        meta, pod_spec = pod["metadata"], pod["spec"]
        container = pod_spec["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert meta["labels"]["comfyfleet.io/pool"] == "serve"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "comfyfleet"
        assert pod_spec["nodeSelector"] == {"gpu": "l4"}
        assert pod_spec["tolerations"][0]["key"] == "nvidia.com/gpu"
        [ref] = meta["ownerReferences"]
        assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == (
            "ComfyUIWorker", "serve", owner["metadata"]["uid"], True)
    service = fleet.get("service", "serve", namespace)
    assert service["spec"]["clusterIP"] == "None"
    assert service["metadata"]["ownerReferences"][0]["uid"] == owner["metadata"]["uid"]

    names = fleet.wait_ready_pods(namespace, "serve", 2)
    status = fleet.wait(lambda: (s := fleet.get("comfyuiworker", "serve", namespace)["status"])
                        .get("readyReplicas") == 2 and s, 15, "status.readyReplicas 2")
    assert status["replicas"] == 2 and status["phase"] == "Ready"
    assert status["selector"] == "app.kubernetes.io/name=comfyui-worker,comfyfleet.io/pool=serve"
    assert {w["pod"] for w in status["workers"]} == names
    assert all(w["ip"].startswith("127.0.0.") for w in status["workers"])
    endpoints = fleet.endpoints(namespace, "serve")
    assert set(endpoints) == {f"k8s:{namespace}/{n}" for n in names}
    for endpoint_id, endpoint in endpoints.items():
        ip = next(w["ip"] for w in status["workers"] if endpoint_id.endswith("/" + w["pod"]))
        assert endpoint.url == f"http://{ip}:8188"

    # A GenerationJob written as YAML (the sample, retargeted to this pool) completes with outputs.
    sample = yaml.safe_load((SAMPLES / "generationjob-workflow.yaml").read_text())
    sample["spec"]["pool"] = "serve"
    apply_yaml(fleet.plane, [sample, txt2img_job("from-template", "serve")], namespace)
    for job_name in ("invert-white", "from-template"):
        done = fleet.wait_job_phase(namespace, job_name, ("Succeeded", "Failed"))
        status = done["status"]
        assert status["phase"] == "Succeeded", status
        assert status["progress"] == 100 and status["jobId"] and status["attempts"] == 1
        assert status["worker"] in endpoints
        assert status["outputs"] and status["outputs"][0]["filename"].endswith(".png")
        assert status["outputs"][0]["url"].startswith(f"http://api.example.test/api/comfyui/outputs/{status['jobId']}/")
        assert status["startTime"] and status["completionTime"]
        job = fleet.dispatcher.repo.get(status["jobId"])
        assert job is not None and job.owner == f"k8s:{namespace}" and job.source == "k8s"
        assert job.idempotency_key == done["metadata"]["uid"] and job.pool == "serve"
    printed = kubectl_ok(fleet.plane, "get", "generationjobs", "-n", namespace)
    assert "Succeeded" in printed and "100" in printed

    # The operator's metrics and liveness endpoints answer.
    assert httpx.get(f"http://127.0.0.1:{fleet.liveness_port}/healthz", timeout=5).is_success
    metrics = httpx.get(f"http://127.0.0.1:{fleet.metrics_port}/metrics", timeout=5).text
    assert f'comfyfleet_operator_pods{{namespace="{namespace}",pool="serve",state="Idle"}}' in metrics


def test_invalid_generationjob_fails_without_queueing(fleet: OperatorFleet, namespace: str) -> None:
    """A spec the operator cannot run is marked Failed with validation_error and never queued."""
    bad = txt2img_job("bad-template", "nowhere")
    bad["spec"]["template"] = "no-such-template"
    apply_yaml(fleet.plane, [bad], namespace)
    status = fleet.wait_job_phase(namespace, "bad-template", ("Failed",), timeout=20)["status"]
    assert status["error"]["code"] == "validation_error"
    assert "no-such-template" in status["error"]["message"]
    assert "jobId" not in status
    assert fleet.jobs_of(namespace) == []


def test_kubectl_scale_changes_pod_count(fleet: OperatorFleet, namespace: str) -> None:
    """Manual scaling through the scale subresource: up to 3, down to 1 (idle pods go)."""
    apply_yaml(fleet.plane, [worker_manifest("manual", replicas=1)], namespace)
    fleet.wait_ready_pods(namespace, "manual", 1)
    kubectl_ok(fleet.plane, "scale", "comfyuiworker/manual", "--replicas=3", "-n", namespace)
    fleet.wait_ready_pods(namespace, "manual", 3)
    scale = json.loads(kubectl_ok(fleet.plane, "get", "--raw",
                                  f"/apis/comfyfleet.io/v1alpha1/namespaces/{namespace}/comfyuiworkers/manual/scale"))
    assert scale["spec"]["replicas"] == 3
    fleet.wait(lambda: scale_status(fleet, namespace, "manual") == 3, 10, "scale status.replicas 3")
    kubectl_ok(fleet.plane, "scale", "comfyuiworker/manual", "--replicas=1", "-n", namespace)
    fleet.wait(lambda: len(fleet.pod_names(namespace, "manual")) == 1, 20, "1 pod after scaling down")
    fleet.wait(lambda: len(fleet.endpoints(namespace, "manual")) == 1, 10, "removed pods withdrawn")
    events = kubectl_ok(fleet.plane, "get", "events", "-n", namespace, "--field-selector",
                        "involvedObject.name=manual", "-o", "jsonpath={.items[*].reason}")
    assert "ScaledUp" in events and "ScaledDown" in events


def scale_status(fleet: OperatorFleet, namespace: str, name: str) -> int | None:
    raw = kubectl_ok(fleet.plane, "get", "--raw",
                     f"/apis/comfyfleet.io/v1alpha1/namespaces/{namespace}/comfyuiworkers/{name}/scale")
    return json.loads(raw).get("status", {}).get("replicas")


def test_autoscaling_up_to_max_and_down_to_min_never_removing_busy_pods(
    fleet: OperatorFleet, namespace: str
) -> None:
    """Queued jobs raise replicas to maxReplicas (never past it); idle pods fall back to minReplicas;
    no busy pod is removed (every job succeeds on its first attempt)."""
    auto = {"enabled": True, "minReplicas": 1, "maxReplicas": 3, "targetQueuePerWorker": 1,
            "scaleDownIdleSeconds": 2}
    apply_yaml(fleet.plane, [worker_manifest("auto", autoscaling=auto)], namespace)
    fleet.wait_ready_pods(namespace, "auto", 1)
    jobs = [txt2img_job(f"burst-{i}", "auto", steps=40, seed=i) for i in range(6)]
    apply_yaml(fleet.plane, jobs, namespace)

    most, seen_busy = 0, set()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        pods = fleet.pod_names(namespace, "auto")
        most = max(most, len(pods))
        leases = fleet.dispatcher.registry.leases([f"k8s:{namespace}/{p}" for p in pods])
        seen_busy |= set(leases)
        phases = [(fleet.get("generationjob", j["metadata"]["name"], namespace).get("status") or {}).get("phase")
                  for j in jobs]
        if all(p in ("Succeeded", "Failed") for p in phases):
            break
        time.sleep(0.3)
    assert most == 3, f"the pool should have grown to maxReplicas 3, saw at most {most}\n{fleet.logs()}"
    assert len(seen_busy) >= 2
    for job in fleet.jobs_of(namespace):
        assert job.state.value == "succeeded", (job.id, job.state, job.error)
        assert job.attempts == 1, f"job {job.id} ran {job.attempts} times: a busy pod was removed?"
    status = fleet.get("comfyuiworker", "auto", namespace)["status"]
    assert status["desiredReplicas"] <= 3
    fleet.wait(lambda: len(fleet.pod_names(namespace, "auto")) == 1, 30, "scale back down to minReplicas 1")
    fleet.wait(lambda: fleet.get("comfyuiworker", "auto", namespace)["status"].get("replicas") == 1, 10,
               "status.replicas 1")


def test_scale_to_zero_and_back(fleet: OperatorFleet, namespace: str) -> None:
    """minReplicas 0: no pods while idle; a queued job brings one up, runs, and the pool drains again."""
    auto = {"enabled": True, "minReplicas": 0, "maxReplicas": 2, "scaleDownIdleSeconds": 1}
    apply_yaml(fleet.plane, [worker_manifest("zero", autoscaling=auto)], namespace)
    fleet.wait(lambda: (fleet.get("comfyuiworker", "zero", namespace).get("status") or {}).get("phase")
               == "ScaledToZero", 15, "phase ScaledToZero")
    assert fleet.pod_names(namespace, "zero") == set()
    apply_yaml(fleet.plane, [txt2img_job("wake", "zero")], namespace)
    woken = fleet.wait_job_phase(namespace, "wake", ("Succeeded", "Failed"), timeout=40)
    assert woken["status"]["phase"] == "Succeeded"
    fleet.wait(lambda: fleet.pod_names(namespace, "zero") == set(), 20, "back to zero pods")


def test_failed_pod_is_replaced_and_its_job_retried_elsewhere(fleet: OperatorFleet, namespace: str) -> None:
    """The kubelet reports a busy pod Failed: it is withdrawn, replaced, and its job runs again on another pod."""
    apply_yaml(fleet.plane, [worker_manifest("crash", replicas=2)], namespace)
    first = fleet.wait_ready_pods(namespace, "crash", 2)
    apply_yaml(fleet.plane, [txt2img_job("victim", "crash", steps=100)], namespace)
    running = fleet.wait_job_phase(namespace, "victim", ("Running",), timeout=20)["status"]
    victim_pod = running["worker"].split("/", 1)[1]
    fleet.kubelet.fail_pod(namespace, victim_pod)

    fleet.wait(lambda: f"k8s:{namespace}/{victim_pod}" not in fleet.endpoints(namespace, "crash"), 10,
               "failed pod withdrawn")
    now = fleet.wait_ready_pods(namespace, "crash", 2)
    assert victim_pod not in now and len(now - first) == 1
    done = fleet.wait_job_phase(namespace, "victim", ("Succeeded", "Failed"), timeout=40)["status"]
    assert done["phase"] == "Succeeded" and done["attempts"] == 2, done
    assert done["worker"] != running["worker"]


def test_unanswering_pod_is_replaced_and_its_job_retried(fleet: OperatorFleet, namespace: str) -> None:
    """ComfyUI dies while the kubelet still says Ready: probes withdraw it, it is replaced, the job retried."""
    apply_yaml(fleet.plane, [worker_manifest("mute", replicas=2)], namespace)
    first = fleet.wait_ready_pods(namespace, "mute", 2)
    apply_yaml(fleet.plane, [txt2img_job("orphan", "mute", steps=100)], namespace)
    running = fleet.wait_job_phase(namespace, "orphan", ("Running",), timeout=20)["status"]
    mute_pod = running["worker"].split("/", 1)[1]
    fleet.kubelet.kill_sim(namespace, mute_pod)

    done = fleet.wait_job_phase(namespace, "orphan", ("Succeeded", "Failed"), timeout=40)["status"]
    assert done["phase"] == "Succeeded" and done["attempts"] == 2 and done["worker"] != running["worker"], done
    now = fleet.wait_ready_pods(namespace, "mute", 2)
    assert mute_pod not in now and len(now - first) == 1


def test_deleting_a_running_generationjob_cancels_it(fleet: OperatorFleet, namespace: str) -> None:
    apply_yaml(fleet.plane, [worker_manifest("cancel", replicas=1)], namespace)
    fleet.wait_ready_pods(namespace, "cancel", 1)
    apply_yaml(fleet.plane, [txt2img_job("doomed", "cancel", steps=150)], namespace)
    job_id = fleet.wait_job_phase(namespace, "doomed", ("Running",), timeout=20)["status"]["jobId"]
    kubectl_ok(fleet.plane, "delete", "generationjob", "doomed", "-n", namespace, "--timeout=30s")
    job = fleet.wait(lambda: (j := fleet.dispatcher.repo.get(job_id)) and j.state.is_terminal and j, 20,
                     "job cancelled")
    assert job.state.value == "cancelled"


def test_operator_restart_mid_run_keeps_pods_and_jobs_single(fleet: OperatorFleet, namespace: str) -> None:
    """SIGKILL the operator while jobs run and another is created; the new one adopts everything:
    no duplicate pods, each GenerationJob queued exactly once, all succeed."""
    apply_yaml(fleet.plane, [worker_manifest("steady", replicas=2)], namespace)
    pods_before = fleet.wait_ready_pods(namespace, "steady", 2)
    apply_yaml(fleet.plane, [txt2img_job(f"r-{i}", "steady", steps=30, seed=i) for i in range(3)], namespace)
    fleet.wait_job_phase(namespace, "r-0", ("Queued", "Dispatched", "Running"), timeout=20)
    fleet.kill_operator()
    apply_yaml(fleet.plane, [txt2img_job("while-down", "steady", steps=5),
                             txt2img_job("half-recorded", "steady", steps=5)], namespace)
    # The dead operator had queued "while-down" but died before kopf recorded it (the crash window
    # between Dispatcher.submit and the status patch): the restarted one must find that job, not add one.
    early = queue_as_the_operator(fleet, namespace, "while-down")
    # It had queued "half-recorded" too and died between kopf's two PATCHes: the create is recorded as
    # handled (not run again), but status has no jobId; the restarted one must still mirror that job.
    half = queue_as_the_operator(fleet, namespace, "half-recorded")
    fleet.record_create_handled(namespace, "half-recorded")
    fleet.start_operator()
    assert fleet.wait_job_phase(namespace, "while-down", ("Succeeded",), timeout=30)["status"]["jobId"] == early
    assert fleet.wait_job_phase(namespace, "half-recorded", ("Succeeded",), timeout=30)["status"]["jobId"] == half

    names = [f"r-{i}" for i in range(3)] + ["while-down", "half-recorded"]
    for name in names:
        status = fleet.wait_job_phase(namespace, name, ("Succeeded", "Failed"), timeout=60)["status"]
        assert status["phase"] == "Succeeded", (name, status)
        assert fleet.pod_names(namespace, "steady") == pods_before
    jobs = fleet.jobs_of(namespace)
    assert len(jobs) == len(names), [(j.id, j.idempotency_key) for j in jobs]
    assert len({j.idempotency_key for j in jobs}) == len(names)
    assert fleet.pod_names(namespace, "steady") == pods_before
    assert fleet.operator_log().count("Traceback") == 0, fleet.operator_log()


def queue_as_the_operator(fleet: OperatorFleet, namespace: str, name: str) -> str:
    """Queue a GenerationJob's job as the operator's create handler does (same idempotency key); its id."""
    body = fleet.get("generationjob", name, namespace)
    job = build_job(parse_spec(body), uid=body["metadata"]["uid"], namespace=namespace,
                    defaults=JobDefaults(max_attempts=3, timeout_seconds=300))
    job, created = fleet.dispatcher.submit(job)
    assert created
    return job.id


def test_deleting_a_comfyuiworker_cleans_up(fleet: OperatorFleet, namespace: str) -> None:
    apply_yaml(fleet.plane, [worker_manifest("gone", replicas=2)], namespace)
    fleet.wait_ready_pods(namespace, "gone", 2)
    kubectl_ok(fleet.plane, "delete", "comfyuiworker", "gone", "-n", namespace, "--timeout=30s")
    assert fleet.pod_names(namespace, "gone") == set()
    assert fleet.endpoints(namespace, "gone") == {}
    assert fleet.plane.kubectl("get", "service", "gone", "-n", namespace).returncode != 0


def test_rbac_is_the_charts_and_nothing_more(fleet: OperatorFleet, namespace: str) -> None:
    """The operator's identity may do what the operator does, through the chart's rules only; an
    authenticated identity without the chart's binding is Forbidden from all of it."""
    pools, jobs = "comfyuiworkers.comfyfleet.io", "generationjobs.comfyfleet.io"
    needed = [
        ("create", "pods", ""), ("delete", "pods", ""), ("list", "pods", ""), ("create", "services", ""),
        ("get", "services", ""), ("delete", "services", ""), ("create", "events", ""), ("watch", pools, ""),
        ("patch", pools, ""), ("patch", pools, "status"), ("patch", jobs, "status"), ("watch", jobs, ""),
        ("update", pools, "finalizers"),
        ("get", pools, ""), ("list", pools, ""),  # the scale-up reaction re-reads pools (operator/reaction.py)
    ]
    for verb, resource, sub in needed:
        args = ["auth", "can-i", verb, resource, "-n", namespace] + ([f"--subresource={sub}"] if sub else [])
        for_operator = fleet.plane.kubectl(*args, identity="operator")
        assert for_operator.stdout.strip() == "yes", (verb, resource, sub, for_operator.stderr)
        for_nobody = fleet.plane.kubectl(*args, identity="nobody")
        assert for_nobody.stdout.strip() == "no", (verb, resource, sub)
    # Least privilege: the operator cannot read Secrets or touch Deployments.
    for verb, resource in (("get", "secrets"), ("create", "deployments.apps"), ("delete", "namespaces")):
        assert fleet.plane.kubectl("auth", "can-i", verb, resource, "-n", namespace,
                                   identity="operator").stdout.strip() == "no"
    denied = fleet.plane.kubectl("apply", "-n", namespace, "-f", "-", identity="nobody",
                                 input=yaml.safe_dump(worker_manifest("intruder", replicas=1)))
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()
