"""Pure observations of a pool's pods: what the kubelet and the dispatch registry say about each one.

The operator reads pods as plain JSON dicts (camelCase, exactly what the API serves) and the
registry as `Endpoint` records; these functions turn both into the `PodView`s that
`scaling.decide_scale` wants and the `WorkerPodStatus` entries of status.workers. No I/O.

Registry identity: a pod is published as endpoint `k8s:<namespace>/<pod>` with URL
`http://<podIP>:<port>` in the pool named after its ComfyUIWorker. Only endpoints with that prefix
and pool are ever touched by the operator, so static endpoints (`comfyfleet up`) and other pools
share the registry safely.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from comfyfleet.operator.builders import ANNOTATION_SPEC_HASH, LIVENESS_THRESHOLD_FACTOR, spec_hash
from comfyfleet.operator.models import ComfyUIWorkerSpec, ProbeSpec, WorkerPodStatus, WorkerState
from comfyfleet.operator.scaling import PodView

ENDPOINT_SOURCE = "k8s"
# Pod phases after which the containers will not come back (restartPolicy Always never reaches
# Succeeded, but a pod evicted or killed by the node can): the pod is replaced, not waited for.
DEAD_PHASES = frozenset({"Failed", "Succeeded"})


def endpoint_prefix(namespace: str) -> str:
    """Prefix of the registry ids of every pod the operator publishes from one namespace."""
    return f"{ENDPOINT_SOURCE}:{namespace}/"


def endpoint_id_for(namespace: str, pod_name: str) -> str:
    """Registry id of a worker pod: `k8s:<namespace>/<pod>` (stable for the pod's whole life)."""
    return f"{endpoint_prefix(namespace)}{pod_name}"


def endpoint_url(pod_ip: str, port: int) -> str:
    """ComfyUI base URL of a pod (IPv6 addresses in brackets)."""
    host = f"[{pod_ip}]" if ":" in pod_ip else pod_ip
    return f"http://{host}:{port}"


def parse_time(value: str | None) -> float | None:
    """Epoch seconds of a Kubernetes timestamp (`2024-05-01T12:00:00Z`); None stays None."""
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True)
class ObservedPod:
    """One worker pod as the API server reports it.

    Attributes:
        name: pod name.
        ip: status.podIP, once the kubelet has set it.
        ready: the Ready condition is True and a podIP is set: ComfyUI passed the readiness probe.
        dead: the pod's phase is Failed or Succeeded: it will never serve again.
        terminating: metadata.deletionTimestamp is set.
        created: creation time, epoch seconds.
        spec_hash: the builders' spec-hash annotation (which spec the pod was built from).
        port: ComfyUI's container port.
    """

    name: str
    ip: str | None
    ready: bool
    dead: bool
    terminating: bool
    created: float
    spec_hash: str | None
    port: int

    @property
    def serving(self) -> bool:
        """The kubelet says ComfyUI answers and the pod is neither dead nor going away."""
        return self.ready and not self.dead and not self.terminating and self.ip is not None


def observe_pod(pod: Mapping[str, Any], default_port: int) -> ObservedPod:
    """Read one pod (a JSON dict as the API serves it) into an ObservedPod."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    conditions = status.get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    ip = status.get("podIP") or None
    return ObservedPod(
        name=meta["name"],
        ip=ip,
        ready=ready and ip is not None,
        dead=status.get("phase") in DEAD_PHASES,
        terminating=bool(meta.get("deletionTimestamp")),
        created=parse_time(meta.get("creationTimestamp")) or 0.0,
        spec_hash=(meta.get("annotations") or {}).get(ANNOTATION_SPEC_HASH),
        port=_container_port(pod) or default_port,
    )


def _container_port(pod: Mapping[str, Any]) -> int | None:
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("containerPort"):
                return int(port["containerPort"])
    return None


def owned_by(pod: Mapping[str, Any], owner_uid: str) -> bool:
    """True when the pod's controller owner reference points at owner_uid (our ComfyUIWorker)."""
    refs = (pod.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == owner_uid and ref.get("controller") for ref in refs)


@dataclass(frozen=True)
class EndpointHealth:
    """What the registry says about a published pod after this pass's probe."""

    healthy: bool = False
    consecutive_failures: int = 0
    ever_seen: bool = False  # a probe has succeeded at least once
    last_assigned_at: float | None = None


def unanswering(health: EndpointHealth, probe: ProbeSpec) -> bool:
    """ComfyUI has missed as many probes in a row as the pod's liveness probe allows: replace the pod.

    Same threshold as the kubelet's liveness probe (`builders`: failureThreshold x 3), so the operator
    gives up on a pod when a kubelet would restart its container, and not on a slow render.
    """
    return health.consecutive_failures >= probe.failure_threshold * LIVENESS_THRESHOLD_FACTOR


def worker_state(pod: ObservedPod, health: EndpointHealth, busy: bool) -> WorkerState:
    """status.workers[].state of one pod."""
    if pod.terminating:
        return "Terminating"
    if pod.dead:
        return "Unhealthy"
    if busy:
        return "Busy"
    if not pod.serving:
        return "Starting"
    if health.healthy:
        return "Idle"
    return "Unhealthy" if health.ever_seen or health.consecutive_failures else "Starting"


def last_job_at(previous: Mapping[str, Any] | None, busy: bool, now: float) -> float | None:
    """When the pod's last job ended, from its previous status.workers entry and its busy flag now.

    The moment a pod is first seen idle after being Busy is recorded as its last job's end; status
    keeps it, so an operator restart does not reset a pod's idle timer.
    """
    previous = previous or {}
    before = parse_time(previous.get("lastJobAt"))
    if not busy and previous.get("state") == "Busy":
        return now
    return before


def idle_since(last_job: float | None, health: EndpointHealth) -> float | None:
    """Start of the pod's idle timer: its last job's end; the last assignment (a job's start) is the
    fallback when the end was missed (the operator was down), which errs toward keeping the pod."""
    candidates = [t for t in (last_job, health.last_assigned_at) if t]
    return max(candidates) if candidates else None


def pod_view(
    pod: ObservedPod, health: EndpointHealth, *, busy: bool, idle_from: float | None, replace: bool
) -> PodView:
    """The scaling view of one pod. replace marks it for replacement (dead, unanswering, outdated)."""
    return PodView(
        name=pod.name,
        ready=pod.serving and health.healthy,
        busy=busy,
        idle_since=idle_from,
        created=pod.created,
        failed=replace,
    )


def needs_replacement(pod: ObservedPod, health: EndpointHealth, probe: ProbeSpec, *, busy: bool,
                      current_hash: str) -> bool:
    """Dead pods, pods whose ComfyUI stopped answering, and idle pods built from an older spec."""
    if pod.dead:
        return True
    if pod.serving and unanswering(health, probe):
        return True
    outdated = pod.spec_hash is not None and pod.spec_hash != current_hash
    return outdated and not busy and not pod.terminating


def worker_entry(
    pod: ObservedPod, state: WorkerState, current_job: str | None, last_job: float | None
) -> WorkerPodStatus:
    """One status.workers entry."""
    return WorkerPodStatus(
        pod=pod.name,
        ip=pod.ip,
        state=state,
        current_job=current_job,
        # Whole seconds, as Kubernetes writes times, so an unchanged pod compares equal pass after pass.
        last_job_at=datetime.fromtimestamp(int(last_job), tz=UTC) if last_job else None,
    )


def queue_depth(queued_by_pool: Mapping[str | None, int], pool: str) -> int:
    """Jobs waiting that this pool can run: the ones for this pool plus the ones for any pool.

    Jobs without a pool (the API's default) run on any healthy pod, so every pool counts them: a
    fleet scaled to zero must wake for them, and the over-provisioning when several autoscaled
    pools wake for the same job is bounded by maxReplicas and undone after scaleDownIdleSeconds.
    """
    return int(queued_by_pool.get(pool, 0)) + int(queued_by_pool.get(None, 0))


def previous_workers(status: Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
    """status.workers of the last pass, by pod name."""
    return {w["pod"]: w for w in (status or {}).get("workers") or [] if isinstance(w, Mapping) and "pod" in w}


def stale_endpoints(published: Iterable[str], serving: Iterable[str]) -> list[str]:
    """Registry ids this pool published that no serving pod backs any more (deleted, not ready, dead)."""
    keep = set(serving)
    return sorted(i for i in published if i not in keep)


def endpoint_health(endpoint: Any | None) -> EndpointHealth:
    """EndpointHealth of a registry `Endpoint` (None: not published, so never probed)."""
    if endpoint is None:
        return EndpointHealth()
    assigned = float(endpoint.last_assigned_at or 0.0)
    return EndpointHealth(
        healthy=bool(endpoint.healthy),
        consecutive_failures=int(endpoint.consecutive_failures),
        ever_seen=endpoint.last_seen_at is not None,
        last_assigned_at=assigned or None,
    )


def assess_pool(
    spec: ComfyUIWorkerSpec,
    pods: Sequence[ObservedPod],
    health: Mapping[str, EndpointHealth],
    jobs: Mapping[str, str],
    previous_status: Mapping[str, Any] | None,
    now: float,
) -> tuple[list[PodView], dict[str, WorkerPodStatus]]:
    """Scaling views of the pool's non-terminating pods, and every pod's status.workers entry.

    Args:
        spec: the pool's spec (probe thresholds, and the spec hash pods are compared with).
        pods: every pod of the pool, terminating ones included.
        health: pod name -> registry health after this pass's probes.
        jobs: pod name -> job id it holds a lease for (busy pods only).
        previous_status: the ComfyUIWorker's status before this pass (lastJobAt, last states).
        now: epoch seconds.
    """
    current_hash = spec_hash(spec)
    prev = previous_workers(previous_status)
    views: list[PodView] = []
    entries: dict[str, WorkerPodStatus] = {}
    for pod in pods:
        pod_health = health.get(pod.name, EndpointHealth())
        job = jobs.get(pod.name)
        busy = job is not None
        last = last_job_at(prev.get(pod.name), busy, now)
        entries[pod.name] = worker_entry(pod, worker_state(pod, pod_health, busy), job, last)
        if pod.terminating:
            continue
        replace = needs_replacement(pod, pod_health, spec.probe, busy=busy, current_hash=current_hash)
        views.append(pod_view(pod, pod_health, busy=busy, idle_from=idle_since(last, pod_health), replace=replace))
    return views, entries


def after_changes(
    entries: Mapping[str, WorkerPodStatus], deleted: Iterable[str], created: Iterable[str]
) -> list[WorkerPodStatus]:
    """status.workers after a pass's deletions (Terminating) and creations (Starting), sorted by pod."""
    out = dict(entries)
    for name in deleted:
        if name in out:
            out[name] = out[name].model_copy(update={"state": "Terminating", "current_job": None})
    for name in created:
        out[name] = WorkerPodStatus(pod=name, state="Starting")
    return [out[name] for name in sorted(out)]
