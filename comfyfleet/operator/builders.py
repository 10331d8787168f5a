"""Pure builders of the Kubernetes objects a ComfyUIWorker owns: its worker pods and headless Service.

Design decision: the operator creates and deletes worker pods itself instead of driving a
Deployment. The one thing comfyfleet's scaling must guarantee is *which* pod goes away on a
scale-down: only a pod that has been idle for scaleDownIdleSeconds, never one running a job
(a GPU job can take minutes and cannot be resumed elsewhere). A Deployment (through its
ReplicaSet) picks victims by its own ranking (unscheduled < pending < not ready < ... < newer),
which knows nothing about ComfyUI's queue. The `controller.kubernetes.io/pod-deletion-cost`
annotation can bias that ranking, but it is best-effort (documented as a hint, not a guarantee)
and needs a race-prone dance: annotate every pod with a fresh cost, then patch `replicas`, while
a pod may pick up a job between the two writes and be killed mid-render. Owning the pods makes the
choice exact (`scaling.pods_to_remove` names them, the operator deletes exactly those), lets a
failed pod be replaced without touching healthy ones, and keeps pod names stable for the dispatch
registry. The price -- reimplementing create-if-missing and replacement -- is small: a handful of
pods per pool, all identical, reconciled from the cluster on every pass (no local state).

Each pod gets a stable DNS name through the headless Service (`<pod>.<worker>.<ns>.svc`), but
the dispatcher reaches pods by podIP published in the registry; the Service exists for DNS and
for anything that wants to list the pool's endpoints.

All builders return plain dicts ready for the Kubernetes API; they do no I/O.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Any

from comfyfleet.operator.models import API_VERSION, WORKER_KIND, ComfyUIWorkerSpec

APP_NAME = "comfyui-worker"
MANAGED_BY = "comfyfleet"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_POOL = "comfyfleet.io/pool"
# Hash of the pod-shaping part of the spec; a pod whose hash differs was built from an older spec
# and gets replaced when it is idle (a rolling update that never interrupts a job).
ANNOTATION_SPEC_HASH = "comfyfleet.io/spec-hash"

CONTAINER_NAME = "comfyui"
PORT_NAME = "http"
HEALTH_PATH = "/system_stats"
# The worker image runs as this non-root user (see worker-image/); fsGroup makes volumes writable.
RUN_AS_UID = 1000
# Model downloads happen before ComfyUI listens: allow up to 30 minutes (180 x 10 s) for an SDXL
# checkpoint plus LoRAs on a slow link before the kubelet gives up on the container.
STARTUP_PERIOD_SECONDS = 10
STARTUP_FAILURE_THRESHOLD = 180
LIVENESS_THRESHOLD_FACTOR = 3
# Pods are only deleted when idle, so a short grace period is enough to flush logs.
TERMINATION_GRACE_SECONDS = 30
# Kubernetes' own suffix alphabet (no vowels, no look-alike digits): no accidental words or confusion.
SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
SUFFIX_LENGTH = 5
DNS_LABEL_MAX = 63


def pool_labels(worker_name: str) -> dict[str, str]:
    """Labels that select exactly the pods of one pool (the Service selector and status.selector)."""
    return {LABEL_NAME: APP_NAME, LABEL_POOL: worker_name}


def worker_labels(worker_name: str) -> dict[str, str]:
    """All labels a worker pod carries."""
    return {
        **pool_labels(worker_name),
        LABEL_INSTANCE: worker_name,
        LABEL_COMPONENT: "worker",
        LABEL_MANAGED_BY: MANAGED_BY,
    }


def selector_for(worker_name: str) -> str:
    """Label selector string of a pool's pods, as published in status.selector (scale subresource)."""
    return ",".join(f"{key}={value}" for key, value in sorted(pool_labels(worker_name).items()))


def pod_name_for(worker_name: str, suffix: int | str | None = None) -> str:
    """Name of a worker pod: `<worker>-<suffix>`; a random 5-character suffix when none is given.

    The result is a valid DNS label (it is also the pod's hostname): the worker part is cut so the
    whole name fits in 63 characters.
    """
    if suffix is None:
        suffix = "".join(secrets.choice(SUFFIX_ALPHABET) for _ in range(SUFFIX_LENGTH))
    tail = f"-{suffix}"
    head = worker_name[: DNS_LABEL_MAX - len(tail)].rstrip("-")
    return f"{head}{tail}"


def owner_reference(worker_name: str, owner_uid: str) -> dict[str, Any]:
    """Controller owner reference to the ComfyUIWorker: pods and Service are garbage-collected with it."""
    return {
        "apiVersion": API_VERSION,
        "kind": WORKER_KIND,
        "name": worker_name,
        "uid": owner_uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def spec_hash(spec: ComfyUIWorkerSpec) -> str:
    """Short stable hash of everything in the spec that shapes a pod (not replicas, autoscaling or prefetch)."""
    # prefetch is dispatch policy, published to the registry: changing it must not replace pods.
    shaping = spec.model_dump(mode="json", by_alias=True, exclude={"replicas", "autoscaling", "prefetch"})
    digest = hashlib.sha256(json.dumps(shaping, sort_keys=True, separators=(",", ":")).encode())
    return digest.hexdigest()[:16]


def comfyui_args(spec: ComfyUIWorkerSpec) -> list[str]:
    """ComfyUI command-line arguments: listen on all interfaces at spec.port, then spec.extraArgs."""
    return ["--listen", "0.0.0.0", "--port", str(spec.port), *(spec.extra_args or [])]


def worker_env(worker_name: str, spec: ComfyUIWorkerSpec) -> list[dict[str, Any]]:
    """Container env: the user's env first, then comfyfleet's own variables (which win on clashes)."""
    ours: list[dict[str, Any]] = [
        {"name": "COMFYFLEET_POOL", "value": worker_name},
        {"name": "COMFYFLEET_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "COMFYFLEET_COMFYUI_PORT", "value": str(spec.port)},
        # Read by the worker image's entrypoint, which fetches (and checks) the files before ComfyUI.
        {"name": "COMFYFLEET_MODELS", "value": _compact([m.to_k8s() for m in spec.models or []])},
        {"name": "COMFYFLEET_LORAS", "value": _compact([lo.to_k8s() for lo in spec.loras or []])},
    ]
    reserved = {var["name"] for var in ours}
    user = [var.to_k8s() for var in spec.env or [] if var.name not in reserved]
    return user + ours


def container_resources(spec: ComfyUIWorkerSpec) -> dict[str, Any]:
    """spec.resources plus the GPU limit `{resourceName: count}` when gpu.count > 0."""
    resources = spec.resources.to_k8s() if spec.resources else {}
    limits = dict(resources.get("limits") or {})
    requests = dict(resources.get("requests") or {})
    gpu = spec.gpu.resource_name
    if spec.gpu.count > 0:
        limits[gpu] = spec.gpu.count
        # Extended resources must have requests == limits; the apiserver defaults a missing request.
        if gpu in requests:
            requests[gpu] = spec.gpu.count
    else:
        limits.pop(gpu, None)
        requests.pop(gpu, None)
    out: dict[str, Any] = {}
    if limits:
        out["limits"] = limits
    if requests:
        out["requests"] = requests
    return out


def health_probe(spec: ComfyUIWorkerSpec) -> dict[str, Any]:
    """httpGet probe of ComfyUI's /system_stats with the spec's probe settings."""
    return {
        "httpGet": {"path": HEALTH_PATH, "port": PORT_NAME, "scheme": "HTTP"},
        "periodSeconds": spec.probe.interval_seconds,
        "timeoutSeconds": spec.probe.timeout_seconds,
        "failureThreshold": spec.probe.failure_threshold,
    }


def build_worker_pod(
    worker_name: str, namespace: str, spec: ComfyUIWorkerSpec, pod_name: str, owner_uid: str
) -> dict[str, Any]:
    """Pod manifest of one ComfyUI worker of the pool `worker_name`, owned by its ComfyUIWorker.

    Args:
        worker_name: the ComfyUIWorker's name (= pool name, label value, Service name).
        namespace: the ComfyUIWorker's namespace; its pods live there too.
        spec: the parsed ComfyUIWorker spec.
        pod_name: from `pod_name_for(worker_name)`.
        owner_uid: metadata.uid of the ComfyUIWorker (owner reference).
    """
    startup = {
        **health_probe(spec),
        "periodSeconds": STARTUP_PERIOD_SECONDS,
        "failureThreshold": STARTUP_FAILURE_THRESHOLD,
    }
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        # args, not command: the image's entrypoint fetches models, then execs ComfyUI with these.
        "args": comfyui_args(spec),
        "ports": [{"name": PORT_NAME, "containerPort": spec.port, "protocol": "TCP"}],
        "env": worker_env(worker_name, spec),
        "resources": container_resources(spec),
        "startupProbe": startup,
        "readinessProbe": health_probe(spec),
        # Liveness is looser than readiness: a ComfyUI busy with a heavy render can answer slowly,
        # and a restart would kill the job; an unready pod only stops getting new work.
        "livenessProbe": {
            **health_probe(spec),
            "failureThreshold": spec.probe.failure_threshold * LIVENESS_THRESHOLD_FACTOR,
        },
        # ComfyUI writes models, outputs and temp files under its own tree, so the root filesystem
        # stays writable; everything else is locked down.
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "restartPolicy": "Always",
        "hostname": pod_name,
        "subdomain": service_name_for(worker_name),
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_UID,
            "runAsGroup": RUN_AS_UID,
            "fsGroup": RUN_AS_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = [t.to_k8s() for t in spec.tolerations]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name,
            "namespace": namespace,
            "labels": worker_labels(worker_name),
            "annotations": {ANNOTATION_SPEC_HASH: spec_hash(spec)},
            "ownerReferences": [owner_reference(worker_name, owner_uid)],
        },
        "spec": pod_spec,
    }


def service_name_for(worker_name: str) -> str:
    """Name of the pool's headless Service: the worker name itself (pods resolve as <pod>.<worker>)."""
    return worker_name


def build_headless_service(
    worker_name: str, namespace: str, spec: ComfyUIWorkerSpec, owner_uid: str
) -> dict[str, Any]:
    """Headless Service of the pool: DNS for ready pods on the ComfyUI port, owned by the ComfyUIWorker."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": service_name_for(worker_name),
            "namespace": namespace,
            "labels": worker_labels(worker_name),
            "ownerReferences": [owner_reference(worker_name, owner_uid)],
        },
        "spec": {
            "clusterIP": "None",
            "selector": pool_labels(worker_name),
            # Only ready pods get DNS records: a starting pod is not yet a ComfyUI server.
            "publishNotReadyAddresses": False,
            "ports": [{"name": PORT_NAME, "port": spec.port, "targetPort": PORT_NAME, "protocol": "TCP"}],
        },
    }


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)
