"""Pod and Service builders: labels, GPU limits, probes, args, env and owner references."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from comfyfleet.operator import builders
from comfyfleet.operator.models import ComfyUIWorkerSpec

UID = "7f1c9a52-0000-4000-8000-000000000001"


def spec(**fields: Any) -> ComfyUIWorkerSpec:
    return ComfyUIWorkerSpec.model_validate({"image": "ghcr.io/comfyfleet/comfyui-worker:0.1.0", **fields})


def pod(**fields: Any) -> dict[str, Any]:
    return builders.build_worker_pod("sdxl", "gen", spec(**fields), "sdxl-abcde", UID)


def container(manifest: dict[str, Any]) -> dict[str, Any]:
    (only,) = manifest["spec"]["containers"]
    return only


def env_of(manifest: dict[str, Any]) -> dict[str, Any]:
    return {var["name"]: var for var in container(manifest)["env"]}


def test_pod_carries_pool_labels_matching_the_selector() -> None:
    manifest = pod()
    labels = manifest["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "comfyui-worker"
    assert labels["app.kubernetes.io/managed-by"] == "comfyfleet"
    assert labels["comfyfleet.io/pool"] == "sdxl"
    selector = dict(part.split("=") for part in builders.selector_for("sdxl").split(","))
    assert selector.items() <= labels.items()
    assert manifest["metadata"]["name"] == "sdxl-abcde" and manifest["metadata"]["namespace"] == "gen"


def test_selector_string_is_stable() -> None:
    assert builders.selector_for("sdxl") == "app.kubernetes.io/name=comfyui-worker,comfyfleet.io/pool=sdxl"


def test_pod_is_controlled_by_its_worker() -> None:
    (ref,) = pod()["metadata"]["ownerReferences"]
    assert ref == {
        "apiVersion": "comfyfleet.io/v1alpha1",
        "kind": "ComfyUIWorker",
        "name": "sdxl",
        "uid": UID,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def test_gpu_limit_uses_count_and_resource_name() -> None:
    resources = container(pod(gpu={"count": 2, "resourceName": "amd.com/gpu"}))["resources"]
    assert resources["limits"] == {"amd.com/gpu": 2}


def test_default_gpu_is_one_nvidia_gpu_merged_with_resources() -> None:
    resources = container(pod(resources={"requests": {"cpu": "4"}, "limits": {"memory": "32Gi"}}))[
        "resources"
    ]
    assert resources == {"limits": {"memory": "32Gi", "nvidia.com/gpu": 1}, "requests": {"cpu": "4"}}


def test_cpu_pool_has_no_gpu_limit() -> None:
    resources = container(
        pod(gpu={"count": 0}, resources={"limits": {"nvidia.com/gpu": 1, "memory": "1Gi"}})
    )["resources"]
    assert resources == {"limits": {"memory": "1Gi"}}
    assert container(pod(gpu={"count": 0}))["resources"] == {}


def test_gpu_request_is_kept_equal_to_the_limit() -> None:
    resources = container(pod(gpu={"count": 2}, resources={"requests": {"nvidia.com/gpu": 1}}))["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 2


def test_comfyui_listens_on_the_port_with_extra_args() -> None:
    c = container(pod(port=9000, extraArgs=["--highvram", "--preview-method", "none"]))
    assert c["args"] == ["--listen", "0.0.0.0", "--port", "9000", "--highvram", "--preview-method", "none"]
    assert c["ports"] == [{"name": "http", "containerPort": 9000, "protocol": "TCP"}]
    assert "command" not in c, "the image's entrypoint must run (it fetches the models)"


def test_probes_hit_system_stats_with_probe_settings() -> None:
    c = container(pod(probe={"intervalSeconds": 7, "timeoutSeconds": 2, "failureThreshold": 4}))
    for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[kind]["httpGet"] == {"path": "/system_stats", "port": "http", "scheme": "HTTP"}
        assert c[kind]["timeoutSeconds"] == 2
    assert c["readinessProbe"]["periodSeconds"] == 7 and c["readinessProbe"]["failureThreshold"] == 4
    assert c["livenessProbe"]["failureThreshold"] > c["readinessProbe"]["failureThreshold"]
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 15 * 60, "room for model downloads"


def test_models_and_loras_are_passed_as_json_env() -> None:
    sha = "a" * 64
    env = env_of(
        pod(
            models=[
                {"name": "sdxl.safetensors", "url": "https://x/sdxl", "sha256": sha},
                {"name": "v.pt", "folder": "vae"},
            ],
            loras=[{"name": "detail.safetensors", "url": "https://x/l"}],
        )
    )
    assert json.loads(env["COMFYFLEET_MODELS"]["value"]) == [
        {"name": "sdxl.safetensors", "url": "https://x/sdxl", "sha256": sha, "folder": "checkpoints"},
        {"name": "v.pt", "folder": "vae"},
    ]
    assert json.loads(env["COMFYFLEET_LORAS"]["value"]) == [
        {"name": "detail.safetensors", "url": "https://x/l"}
    ]
    assert env["COMFYFLEET_POOL"]["value"] == "sdxl"
    assert env["COMFYFLEET_POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_user_env_is_kept_but_cannot_override_ours() -> None:
    secret = {"secretKeyRef": {"name": "hf", "key": "token"}}
    env = pod(env=[{"name": "HF_TOKEN", "valueFrom": secret}, {"name": "COMFYFLEET_POOL", "value": "evil"}])
    variables = container(env)["env"]
    assert variables[0] == {"name": "HF_TOKEN", "valueFrom": secret}
    assert [v["value"] for v in variables if v["name"] == "COMFYFLEET_POOL"] == ["sdxl"]


def test_scheduling_fields_are_copied() -> None:
    toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    manifest = pod(nodeSelector={"gpu": "l4"}, tolerations=[toleration], imagePullPolicy="Always")
    assert manifest["spec"]["nodeSelector"] == {"gpu": "l4"}
    assert manifest["spec"]["tolerations"] == [toleration]
    assert container(manifest)["imagePullPolicy"] == "Always"
    assert "nodeSelector" not in pod()["spec"] and "tolerations" not in pod()["spec"]


def test_pod_runs_non_root_without_privilege_escalation() -> None:
    manifest = pod()
    assert manifest["spec"]["securityContext"]["runAsNonRoot"] is True
    assert manifest["spec"]["securityContext"]["runAsUser"] != 0
    assert container(manifest)["securityContext"]["allowPrivilegeEscalation"] is False
    assert container(manifest)["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_pod_gets_dns_under_the_headless_service() -> None:
    manifest = pod()
    assert manifest["spec"]["hostname"] == "sdxl-abcde"
    assert manifest["spec"]["subdomain"] == builders.service_name_for("sdxl") == "sdxl"


def test_spec_hash_changes_with_the_image_but_not_with_scaling() -> None:
    base = builders.spec_hash(spec())
    assert builders.spec_hash(spec(image="other:1")) != base
    assert builders.spec_hash(spec(replicas=5, autoscaling={"enabled": True, "maxReplicas": 9})) == base
    assert pod()["metadata"]["annotations"][builders.ANNOTATION_SPEC_HASH] == base


def test_prefetch_is_dispatch_policy_and_never_replaces_pods() -> None:
    # Turning prefetch on (or the field appearing on an operator upgrade) must not roll the pool.
    assert builders.spec_hash(spec(prefetch=1)) == builders.spec_hash(spec()) == builders.spec_hash(spec(prefetch=0))


def test_headless_service_selects_the_pool_on_the_comfyui_port() -> None:
    svc = builders.build_headless_service("sdxl", "gen", spec(port=8190), UID)
    assert svc["metadata"]["name"] == "sdxl" and svc["metadata"]["namespace"] == "gen"
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"] == builders.pool_labels("sdxl")
    assert svc["spec"]["ports"] == [{"name": "http", "port": 8190, "targetPort": "http", "protocol": "TCP"}]
    assert svc["metadata"]["ownerReferences"][0]["controller"] is True


@pytest.mark.parametrize("suffix", [0, 7, "x1"])
def test_pod_name_with_given_suffix(suffix: int | str) -> None:
    assert builders.pod_name_for("sdxl", suffix) == f"sdxl-{suffix}"


def test_random_pod_names_are_dns_labels_and_differ() -> None:
    names = {builders.pod_name_for("sdxl") for _ in range(20)}
    assert len(names) > 1
    assert all(re.fullmatch(r"sdxl-[bcdfghjklmnpqrstvwxz2456789]{5}", n) for n in names)


def test_long_worker_name_is_cut_to_fit_a_dns_label() -> None:
    name = builders.pod_name_for("a" * 60 + "-b", "xyz12")
    assert len(name) <= 63 and name.endswith("-xyz12") and "--" not in name
