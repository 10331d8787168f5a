"""The chart's rendered manifests are accepted by a real kube-apiserver, and its RBAC grants what it says.

Each test renders the chart with `helm template` into a fresh namespace (release named after it,
so cluster-scoped objects do not collide), applies it server-side as a dry run and then for real,
and checks the result with kubectl. The namespace enforces the `restricted` Pod Security Standard,
so a workload that is not non-root/read-only/capability-free is refused or warned about here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s.envtest import ControlPlane
from tests.unit.test_chart import CHART, PRODUCTION_VALUES, helm

# A cold helm build (first run on a machine) takes minutes; applying itself takes seconds.
pytestmark = [pytest.mark.k8s, pytest.mark.timeout(900)]

FIELD_MANAGER = "comfyfleet-chart-test"
# Kinds whose API a bare apiserver does not serve (Prometheus Operator's CRDs are not installed).
NOT_SERVED = {"monitoring.coreos.com/v1": {"ServiceMonitor"}}


def render(release: str, namespace: str, *args: str) -> list[dict[str, Any]]:
    proc = helm("template", release, str(CHART), "--namespace", namespace, *args)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def kubectl_ok(plane: ControlPlane, *args: str, input: str | None = None) -> str:
    proc = plane.kubectl(*args, input=input)
    assert proc.returncode == 0, f"kubectl {' '.join(args)} failed:\n{proc.stderr}"
    return proc.stdout + proc.stderr


def apply(plane: ControlPlane, objects: list[dict[str, Any]], *extra: str) -> str:
    """Server-side apply objects (stdout + warnings), as kubectl would for an SRE."""
    return kubectl_ok(
        plane,
        "apply",
        "--server-side",
        f"--field-manager={FIELD_MANAGER}",
        *extra,
        "-f",
        "-",
        input=yaml.safe_dump_all(objects),
    )


def served(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop the kinds this apiserver cannot serve, and only those."""
    return [o for o in objects if o["kind"] not in NOT_SERVED.get(o["apiVersion"], set())]


def wait_for(check: Any, timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.2)


@pytest.fixture
def crds(control_plane: ControlPlane) -> None:
    """The chart's CRDs, applied (dry run first) and Established."""
    files = sorted((CHART / "crds").glob("*.yaml"))
    objects = [yaml.safe_load(f.read_text()) for f in files]
    apply(control_plane, objects, "--dry-run=server")
    apply(control_plane, objects, "--force-conflicts")
    for crd in objects:
        kubectl_ok(
            control_plane, "wait", "--for=condition=Established", f"crd/{crd['metadata']['name']}", "--timeout=60s"
        )


@pytest.fixture
def restricted_namespace(control_plane: ControlPlane, namespace: str) -> str:
    """The per-test namespace, enforcing the restricted Pod Security Standard."""
    kubectl_ok(
        control_plane,
        "label",
        "namespace",
        namespace,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/warn=restricted",
        "--overwrite",
    )
    return namespace


@pytest.fixture
def release(control_plane: ControlPlane, restricted_namespace: str) -> Iterator[str]:
    """A release name unique to the test; its cluster-scoped objects are deleted afterwards."""
    name = restricted_namespace
    yield name
    control_plane.kubectl(
        "delete",
        "clusterrole,clusterrolebinding",
        "-l",
        f"app.kubernetes.io/instance={name}",
        "--ignore-not-found",
    )


def can_i(plane: ControlPlane, user: str, namespace: str, verb: str, resource: str, subresource: str = "") -> bool:
    """Ask the apiserver's authorizer (a SubjectAccessReview) whether user may verb resource.

    resource is `plural` or `plural.group`; namespace "" asks cluster-wide. Unlike `kubectl auth
    can-i`, this needs no discovery, so it also answers for kinds not installed (kopf peerings).
    """
    plural, _, group = resource.partition(".")
    attributes = {"verb": verb, "resource": plural, "group": group, "subresource": subresource, "namespace": namespace}
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": user,
            "groups": ["system:serviceaccounts", "system:authenticated"],
            "resourceAttributes": attributes,
        },
    }
    out = plane.kubectl("create", "-f", "-", "-o", "json", input=json.dumps(review))
    assert out.returncode == 0, out.stderr
    return bool(json.loads(out.stdout)["status"].get("allowed"))


@pytest.mark.parametrize("values", [None, PRODUCTION_VALUES], ids=["default", "production"])
def test_rendered_chart_is_accepted_by_the_apiserver(
    control_plane: ControlPlane, crds: None, restricted_namespace: str, release: str, values: Path | None
) -> None:
    objects = render(release, restricted_namespace, *(["-f", str(values)] if values else []))
    to_apply = served(objects)
    skipped = {(o["apiVersion"], o["kind"]) for o in objects} - {(o["apiVersion"], o["kind"]) for o in to_apply}
    assert skipped <= {("monitoring.coreos.com/v1", "ServiceMonitor")}

    dry = apply(control_plane, to_apply, "--dry-run=server")
    assert "PodSecurity" not in dry, dry
    # A server-side dry run persists nothing.
    listed = control_plane.kubectl("get", "deployments", "-n", restricted_namespace, "-o", "name")
    assert listed.stdout.strip() == ""

    out = apply(control_plane, to_apply)
    assert "PodSecurity" not in out, out
    got = control_plane.kubectl("get", "-f", "-", "-o", "name", input=yaml.safe_dump_all(to_apply))
    assert got.returncode == 0, got.stderr
    assert len(got.stdout.split()) == len(to_apply)

    # Applying the same manifests again is a no-op, as a repeated `helm upgrade` would be.
    again = apply(control_plane, to_apply)
    assert "PodSecurity" not in again


def test_example_pool_is_a_valid_comfyuiworker(
    control_plane: ControlPlane, crds: None, restricted_namespace: str, release: str, tmp_path: Path
) -> None:
    values = tmp_path / "pool.yaml"
    values.write_text(yaml.safe_dump({"workerPool": {"enabled": True, "name": "pool-a"}}))
    objects = render(release, restricted_namespace, "--show-only", "templates/workerpool.yaml", "-f", str(values))
    apply(control_plane, objects)
    pool = json.loads(
        kubectl_ok(control_plane, "get", "comfyuiworker", "pool-a", "-n", restricted_namespace, "-o", "json")
    )
    assert pool["spec"]["gpu"] == {"count": 1, "resourceName": "nvidia.com/gpu"}
    # The scale subresource works on the chart's pool, which is what SREs use to resize it.
    kubectl_ok(control_plane, "scale", "comfyuiworker/pool-a", "--replicas=3", "-n", restricted_namespace)
    wait_for(
        lambda: (
            control_plane.kubectl(
                "get", "comfyuiworker", "pool-a", "-n", restricted_namespace, "-o", "jsonpath={.spec.replicas}"
            ).stdout
            == "3"
        ),
        what="spec.replicas=3 after kubectl scale",
    )


def test_operator_service_account_gets_exactly_the_chart_rules(
    control_plane: ControlPlane, crds: None, restricted_namespace: str, release: str
) -> None:
    objects = render(release, restricted_namespace, "--show-only", "templates/operator-rbac.yaml")
    apply(control_plane, objects)
    account = f"system:serviceaccount:{restricted_namespace}:{release}-comfyfleet-operator"
    ns = restricted_namespace

    # RBAC changes reach the authorizer within a moment; wait for the first grant.
    wait_for(lambda: can_i(control_plane, account, ns, "create", "pods"), what="operator RBAC to take effect")
    for verb, resource, subresource, where in [
        ("list", "clusterkopfpeerings.kopf.dev", "", ""),
        ("patch", "kopfpeerings.kopf.dev", "", ns),
        ("watch", "customresourcedefinitions.apiextensions.k8s.io", "", ""),
        ("list", "namespaces", "", ""),
        ("create", "events", "", ns),
        ("create", "events.events.k8s.io", "", ns),
        ("watch", "comfyuiworkers.comfyfleet.io", "", ns),
        ("patch", "comfyuiworkers.comfyfleet.io", "status", ns),
        ("update", "comfyuiworkers.comfyfleet.io", "finalizers", ns),
        ("patch", "generationjobs.comfyfleet.io", "", ns),
        ("patch", "generationjobs.comfyfleet.io", "status", ns),
        ("create", "pods", "", ns),
        ("delete", "pods", "", ns),
        ("create", "services", "", ns),
        ("delete", "services", "", ns),
        # Cluster-wide by default: every namespace, and lists across all of them.
        ("create", "pods", "", "default"),
        ("watch", "pods", "", ""),
        ("watch", "comfyuiworkers.comfyfleet.io", "", ""),
    ]:
        assert can_i(control_plane, account, where, verb, resource, subresource), (
            f"operator may not {verb} {resource} {subresource} in {where or 'the cluster'}"
        )
    for verb, resource in [
        ("get", "secrets"),
        ("list", "configmaps"),
        ("create", "deployments.apps"),
        ("delete", "comfyuiworkers.comfyfleet.io"),
        ("create", "clusterroles.rbac.authorization.k8s.io"),
        ("update", "pods"),
        ("patch", "pods"),
        ("create", "pods/exec"),
        ("list", "services"),
        ("patch", "comfyuiworkers.comfyfleet.io/scale"),
    ]:
        plural, _, sub = resource.partition("/")
        assert not can_i(control_plane, account, ns, verb, plural, sub), f"operator may {verb} {resource}"


def test_watch_namespace_confines_the_operator(
    control_plane: ControlPlane, crds: None, restricted_namespace: str, release: str, tmp_path: Path
) -> None:
    values = tmp_path / "ns.yaml"
    values.write_text(yaml.safe_dump({"operator": {"watchNamespace": restricted_namespace}}))
    objects = render(release, restricted_namespace, "--show-only", "templates/operator-rbac.yaml", "-f", str(values))
    apply(control_plane, objects)
    account = f"system:serviceaccount:{restricted_namespace}:{release}-comfyfleet-operator"
    wait_for(lambda: can_i(control_plane, account, restricted_namespace, "create", "pods"), what="RoleBinding")
    assert not can_i(control_plane, account, "default", "create", "pods")
    assert not can_i(control_plane, account, restricted_namespace, "list", "pods", "--all-namespaces")
    # Framework rules stay cluster-wide: kopf still observes CRDs and namespaces.
    assert can_i(
        control_plane, account, restricted_namespace, "watch", "customresourcedefinitions.apiextensions.k8s.io"
    )


def test_dispatcher_probes_and_metrics_service_are_stored_as_rendered(
    control_plane: ControlPlane, crds: None, restricted_namespace: str, release: str
) -> None:
    """The default dispatchers: `comfyfleet dispatcher` with 256 slots each, probed on /healthz of the
    named port that the metrics Service (and with it the ServiceMonitor) targets."""
    objects = render(release, restricted_namespace, "--show-only", "templates/dispatcher.yaml")
    out = apply(control_plane, objects)
    assert "PodSecurity" not in out, out
    name = f"{release}-comfyfleet-dispatcher"

    def stored(kind: str) -> dict[str, Any]:
        return json.loads(kubectl_ok(control_plane, "get", kind, name, "-n", restricted_namespace, "-o", "json"))

    deployment, service = stored("deployment"), stored("service")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]
    [container] = pod["spec"]["containers"]
    assert container["args"] == ["dispatcher"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["COMFYFLEET_MAX_IN_FLIGHT"] == "256" and env["COMFYFLEET_DISPATCHER_PORT"] == "8081"
    assert [(p["name"], p["containerPort"]) for p in container["ports"]] == [("http", 8081)]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthz" and container[probe]["httpGet"]["port"] == "http"
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert [(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [("http", 8081, "http")]
