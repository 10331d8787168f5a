"""Fixtures for the k8s tier: one real control plane per session, a fresh namespace per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest

from tests.k8s.envtest import BINARIES_SCRIPT, ControlPlane, ControlPlaneError, find_binaries

# The operator's ServiceAccount as the apiserver would authenticate it; its rights come only
# from the RBAC the tests apply, never from the admin.
OPERATOR_IDENTITY = (
    "system:serviceaccount:comfyfleet:comfyfleet-operator",
    ["system:serviceaccounts", "system:serviceaccounts:comfyfleet", "system:authenticated"],
)
# An authenticated identity with no bindings, to prove RBAC denies by default.
NOBODY_IDENTITY = ("comfyfleet-test-nobody", ["system:authenticated"])

_bin_dir: Path | None = None
_bin_error: str | None = None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Provide the binaries before any k8s test runs, outside the per-test timeout.

    A cold build takes ~25 min, far past pytest-timeout's limit, so it must not happen inside a
    fixture. A failure is kept and reported by the control_plane fixture, failing each k8s test.
    """
    global _bin_dir, _bin_error
    if config.option.collectonly or not any(item.get_closest_marker("k8s") for item in items):
        return
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"k8s tier: providing etcd/kube-apiserver/kubectl via {BINARIES_SCRIPT.name} ...")
    try:
        _bin_dir = find_binaries()
    except ControlPlaneError as exc:
        _bin_error = str(exc)


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """etcd + kube-apiserver with RBAC, started once per session; identities: admin, operator, nobody."""
    if _bin_error is not None:
        pytest.fail(f"k8s test binaries could not be provided:\n{_bin_error}", pytrace=False)
    plane = ControlPlane(
        extra_identities={"operator": OPERATOR_IDENTITY, "nobody": NOBODY_IDENTITY},
        bin_dir=_bin_dir,
    )
    try:
        plane.start()
    except ControlPlaneError as exc:
        pytest.fail(f"the test control plane did not start:\n{exc}", pytrace=False)
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def admin_kubeconfig(control_plane: ControlPlane) -> Path:
    """Path of a kubeconfig for the cluster admin (system:masters)."""
    return control_plane.kubeconfig_path("admin")


@pytest.fixture
def admin_api(control_plane: ControlPlane) -> Iterator[kubernetes.client.ApiClient]:
    """A Python ApiClient authenticated as the admin, closed after the test."""
    with control_plane.api_client("admin") as api:
        yield api


@pytest.fixture
def core_v1(admin_api: kubernetes.client.ApiClient) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(admin_api)


@pytest.fixture
def namespace(control_plane: ControlPlane, core_v1: kubernetes.client.CoreV1Api) -> Iterator[str]:
    """A fresh namespace for one test, deleted with everything in it afterwards."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    core_v1.create_namespace({"metadata": {"name": name, "labels": {"comfyfleet.test/ns": "true"}}})
    try:
        yield name
    finally:
        control_plane.delete_namespace(name)
