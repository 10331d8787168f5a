"""The test control plane is a real, RBAC-enforcing apiserver, and the kubelet helpers really write pod status."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable

import kubernetes
import pytest
import yaml
from kubernetes.client import ApiException, CoreV1Api

from tests.k8s.envtest import ControlPlane
from tests.k8s.kubelet import loopback_ip, mark_pod_failed, mark_pod_not_ready, mark_pod_ready, pod_is_ready

pytestmark = pytest.mark.k8s


def eventually(check: Callable[[], object], timeout: float = 10.0, what: str = "") -> object:
    """Poll check until truthy; RBAC and caches in the apiserver settle within a second or two."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            assert result, f"not true after {timeout}s: {what}"
            return result
        time.sleep(0.1)


def can_list_pods(plane: ControlPlane, identity: str, namespace: str) -> bool:
    with plane.api_client(identity) as api:
        try:
            CoreV1Api(api).list_namespaced_pod(namespace)
        except ApiException as exc:
            if exc.status == 403:
                return False
            raise
    return True


def test_apiserver_is_ready_with_rbac_and_the_pinned_version(control_plane: ControlPlane) -> None:
    assert control_plane.kubectl("get", "--raw", "/readyz").stdout == "ok"
    assert "rbac.authorization.k8s.io/v1" in control_plane.kubectl("api-versions").stdout.split()
    # The apiserver and kubectl come from one pinned k8s.io/kubernetes build, stamped with its version.
    versions = json.loads(control_plane.kubectl("version", "-o", "json").stdout)
    assert versions["serverVersion"]["gitVersion"] == versions["clientVersion"]["gitVersion"]
    assert versions["serverVersion"]["gitVersion"].startswith("v1.")
    assert control_plane.kubectl("auth", "can-i", "list", "pods", identity="nobody").stdout.strip() == "no"
    assert control_plane.kubectl("auth", "can-i", "*", "*").stdout.strip() == "yes"


def test_admin_creates_configmaps_with_kubectl_and_the_python_client(
    control_plane: ControlPlane, core_v1: CoreV1Api, namespace: str
) -> None:
    manifest = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "from-kubectl"}, "data": {"a": "1"}}
    applied = control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(manifest))
    assert applied.returncode == 0, applied.stderr
    assert core_v1.read_namespaced_config_map("from-kubectl", namespace).data == {"a": "1"}

    core_v1.create_namespaced_config_map(namespace, {"metadata": {"name": "from-python"}, "data": {"b": "2"}})
    got = control_plane.kubectl("get", "configmap", "from-python", "-n", namespace, "-o", "json")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["data"] == {"b": "2"}


def test_identity_without_bindings_is_forbidden(control_plane: ControlPlane, namespace: str) -> None:
    assert not can_list_pods(control_plane, "nobody", namespace)
    denied = control_plane.kubectl("get", "pods", "-n", namespace, identity="nobody")
    assert denied.returncode != 0
    assert "Forbidden" in denied.stderr and "comfyfleet-test-nobody" in denied.stderr


def test_role_binding_grants_listing_pods(control_plane: ControlPlane, namespace: str) -> None:
    rbac = kubernetes.client.RbacAuthorizationV1Api
    with control_plane.api_client("admin") as api:
        rbac(api).create_namespaced_role(
            namespace,
            {
                "metadata": {"name": "pod-reader"},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}],
            },
        )
        role_ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"}
        rbac(api).create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": "nobody-reads-pods"},
                "roleRef": role_ref,
                "subjects": [
                    {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "comfyfleet-test-nobody"}
                ],
            },
        )
        # The operator identity is matched by a ServiceAccount subject, as in the chart's RBAC.
        rbac(api).create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": "operator-reads-pods"},
                "roleRef": role_ref,
                "subjects": [{"kind": "ServiceAccount", "name": "comfyfleet-operator", "namespace": "comfyfleet"}],
            },
        )
    eventually(lambda: can_list_pods(control_plane, "nobody", namespace), what="nobody may list pods")
    eventually(lambda: can_list_pods(control_plane, "operator", namespace), what="operator SA may list pods")
    assert control_plane.kubectl("get", "pods", "-n", namespace, identity="nobody").returncode == 0
    # The grant is only what the Role says: other verbs and other namespaces stay forbidden.
    assert (
        control_plane.kubectl("auth", "can-i", "delete", "pods", "-n", namespace, identity="nobody").stdout.strip()
        == "no"
    )
    assert not can_list_pods(control_plane, "nobody", "default")


def test_kubelet_helpers_drive_pod_status(core_v1: CoreV1Api, namespace: str) -> None:
    pod = {
        "metadata": {"name": "comfy-0"},
        "spec": {
            "containers": [{"name": "comfyui", "image": "comfyfleet/worker:test", "ports": [{"containerPort": 8188}]}]
        },
    }
    core_v1.create_namespaced_pod(namespace, pod)
    assert core_v1.read_namespaced_pod("comfy-0", namespace).status.phase == "Pending"

    mark_pod_ready(core_v1, namespace, "comfy-0", loopback_ip(7))
    ready = core_v1.read_namespaced_pod("comfy-0", namespace)
    assert (ready.status.phase, ready.status.pod_ip) == ("Running", "127.0.0.7")
    assert [ip.ip for ip in ready.status.pod_ips] == ["127.0.0.7"]
    assert pod_is_ready(ready)
    assert {c.type: c.status for c in ready.status.conditions}["ContainersReady"] == "True"
    assert [(c.name, c.ready) for c in ready.status.container_statuses] == [("comfyui", True)]

    mark_pod_not_ready(core_v1, namespace, "comfy-0")
    not_ready = core_v1.read_namespaced_pod("comfy-0", namespace)
    assert (not_ready.status.phase, not_ready.status.pod_ip) == ("Running", "127.0.0.7")
    assert not pod_is_ready(not_ready)

    mark_pod_failed(core_v1, namespace, "comfy-0", reason="OOMKilled", exit_code=137)
    failed = core_v1.read_namespaced_pod("comfy-0", namespace)
    assert failed.status.phase == "Failed"
    assert failed.status.container_statuses[0].state.terminated.exit_code == 137


def test_loopback_ip_numbers_pods() -> None:
    assert loopback_ip(1) == "127.0.0.1"
    with pytest.raises(ValueError):
        loopback_ip(255)


def test_delete_namespace_removes_it_and_its_objects(control_plane: ControlPlane, core_v1: CoreV1Api) -> None:
    name = f"t-del-{uuid.uuid4().hex[:8]}"
    core_v1.create_namespace({"metadata": {"name": name}})
    core_v1.create_namespaced_config_map(name, {"metadata": {"name": "held", "finalizers": ["example.com/hold"]}})
    core_v1.create_namespaced_pod(
        name, {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}
    )
    mark_pod_ready(core_v1, name, "p", loopback_ip(9))

    control_plane.delete_namespace(name, timeout=2.0)

    with pytest.raises(ApiException) as gone:
        core_v1.read_namespace(name)
    assert gone.value.status == 404
    everywhere = core_v1.list_config_map_for_all_namespaces().items + core_v1.list_pod_for_all_namespaces().items
    assert [o.metadata.name for o in everywhere if o.metadata.namespace == name] == []
