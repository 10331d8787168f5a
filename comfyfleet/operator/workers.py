"""ComfyUIWorker handlers: own the pool's pods and Service, publish them for dispatch, scale them.

Every handler runs the same level-triggered pass (`reconcile_pool`), so create, a spec change
(`kubectl scale` included), an operator restart and the periodic timer all converge the same way:

1. read the pool's pods from the API server (owned by this ComfyUIWorker's uid);
2. publish serving pods to the dispatch registry, withdraw the rest, probe each one's ComfyUI;
3. read the queue depth and the leases (busy pods), let `scaling.decide_scale` choose;
4. delete failed/removed pods (a pod chosen for scale-down is withdrawn from dispatch under the
   scheduler's lock first, so it cannot be handed a job on its way out), create missing ones;
5. write status (only when it changed) and post an event for each scale action.

Handlers return nothing (status schemas keep no unknown fields); they write `patch.status`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

import kopf
import redis
from pydantic import ValidationError

from comfyfleet.dispatch.registry import Endpoint
from comfyfleet.fairuse.pools import declare_pool
from comfyfleet.operator.builders import (
    build_headless_service,
    build_worker_pod,
    pod_name_for,
    selector_for,
    service_name_for,
)
from comfyfleet.operator.capacity import (
    CapacityVerdict,
    assess_capacity,
    capacity_conditions,
    capacity_news,
    live_slots,
)
from comfyfleet.operator.k8s import KubeError
from comfyfleet.operator.models import ComfyUIWorkerSpec, namespace_of, set_condition, spec_problem
from comfyfleet.operator.pods import (
    ObservedPod,
    after_changes,
    assess_pool,
    endpoint_health,
    endpoint_id_for,
    endpoint_url,
    observe_pod,
    owned_by,
    queue_depth,
    stale_endpoints,
)
from comfyfleet.operator.publish import PoolPublisher
from comfyfleet.operator.runtime import Runtime
from comfyfleet.operator.scaling import ScaleDecision, decide_scale, slow_start_batches, worker_status

log = logging.getLogger(__name__)

# A random pod name can clash with one that exists (or just went away); a few tries always suffice.
CREATE_ATTEMPTS = 5
# Most pods created at once (the slow-start batches double up to this): each create is a blocking API call
# in a worker thread, and the event loop's thread pool (a handful of threads) is shared with every Redis
# call of the operator; more at once would only queue there, in front of the GenerationJob handlers.
CREATE_BATCH_MAX = 16
# Most pods probed at once: a probe round over hundreds of pods runs in waves of this many, so other
# handlers (a GenerationJob being queued) wait behind a wave, not behind every pod's requests.
PROBE_CONCURRENCY = 32


class InvalidWorkerSpec(ValueError):
    """A ComfyUIWorker spec the operator cannot act on (cross-field rules the CRD schema cannot state)."""


def parse_spec(body: Mapping[str, Any]) -> ComfyUIWorkerSpec:
    try:
        return ComfyUIWorkerSpec.from_body(body)
    except ValidationError as exc:
        raise InvalidWorkerSpec(spec_problem(exc)) from None


# ---------------------------------------------------------------------------------------------
# Handlers (registered in main.py)


async def comfyuiworker_create(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    """A new pool: create its Service and pods."""
    await _reconcile_or_fail(memo.runtime, body, patch)


async def comfyuiworker_update(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    """A spec change (replicas through `kubectl scale`, autoscaling, pod shape): converge now."""
    await _reconcile_or_fail(memo.runtime, body, patch)


async def comfyuiworker_resume(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    """Operator (re)start: re-derive the pool from the cluster and Redis."""
    await _reconcile_or_fail(memo.runtime, body, patch)


async def comfyuiworker_reconcile(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    """Timer, every probe interval: probe pods, publish/withdraw, autoscale, replace failures, status."""
    await asyncio.to_thread(declare_pool, memo.runtime.dispatcher, body["metadata"]["name"])  # HOOK(reliability)
    try:
        await reconcile_pool(memo.runtime, body, patch)
    except InvalidWorkerSpec as exc:
        _mark_invalid(body, patch, str(exc))  # already reported by the event handlers; keep status right
        logger.debug("not reconciling an invalid spec: %s", exc)


async def comfyuiworker_delete(
    body: kopf.Body, name: str, namespace: str | None, uid: str, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    """The pool is being deleted: withdraw its endpoints, delete its pods and Service (finalizer)."""
    rt: Runtime = memo.runtime
    ns = namespace_of(namespace)
    publisher = PoolPublisher(rt.dispatcher, ns, name)
    try:
        async with rt.lock_for(uid):
            withdrawn = await asyncio.to_thread(publisher.withdraw_all)
            pods = [p for p in await rt.kube.list_pods(ns, selector_for(name)) if owned_by(p, uid)]
            for pod in pods:
                await rt.kube.delete_pod(ns, pod["metadata"]["name"])
            service = await rt.kube.read_service(ns, service_name_for(name))
            if service is not None and owned_by(service, uid):
                await rt.kube.delete_service(ns, service_name_for(name))
    except (KubeError, redis.RedisError) as exc:
        raise kopf.TemporaryError(f"cleanup of pool {name} failed: {exc}",
                                  delay=rt.settings.probe_interval_seconds) from exc
    logger.info("pool %s deleted: withdrew %d endpoint(s), deleted %d pod(s)", name, len(withdrawn), len(pods))
    await rt.forget(uid)
    rt.metrics.forget_pool(ns, name)


# ---------------------------------------------------------------------------------------------
# The pass


async def _reconcile_or_fail(rt: Runtime, body: kopf.Body, patch: kopf.Patch) -> None:
    try:
        await reconcile_pool(rt, body, patch)
    except InvalidWorkerSpec as exc:
        _mark_invalid(body, patch, str(exc))
        raise kopf.PermanentError(str(exc)) from None


def _mark_invalid(body: kopf.Body, patch: kopf.Patch, message: str) -> None:
    status = dict(body.get("status") or {})
    conditions = set_condition(status.get("conditions"), "Ready", "False", "InvalidSpec", message, time.time(),
                               body["metadata"].get("generation"))
    new = {"phase": "Failed", "conditions": conditions, "observedGeneration": body["metadata"].get("generation")}
    if _changed(status, new):
        patch.status.update(new)


async def reconcile_pool(rt: Runtime, body: kopf.Body, patch: kopf.Patch) -> None:
    """One level-triggered pass over a pool (see the module docstring); writes patch.status."""
    meta = body["metadata"]
    name, namespace, uid = meta["name"], meta["namespace"], meta["uid"]
    if meta.get("deletionTimestamp"):
        return  # being deleted: the delete handler withdraws and removes everything; create nothing now
    spec = parse_spec(body)
    publisher = PoolPublisher(rt.dispatcher, namespace, name)
    try:
        async with rt.lock_for(uid):
            await rt.kube.ensure_service(build_headless_service(name, namespace, spec, uid))
            listed = await rt.kube.list_pods(namespace, selector_for(name))
            pods = [observe_pod(p, spec.port) for p in listed if owned_by(p, uid)]
            health, jobs = await _sync_registry(rt, publisher, spec, uid, namespace, pods)
            queued = queue_depth(await asyncio.to_thread(publisher.queued_by_pool), name)
            now = time.time()
            views, entries = assess_pool(spec, pods, health, jobs, body.get("status"), now)
            decision = decide_scale(spec, queued, views, now)
            deleted, created = await _apply(rt, body, spec, publisher, decision)
            capacity = await _dispatch_capacity(publisher, time.time())
    except (KubeError, redis.RedisError) as exc:
        rt.metrics.reconcile_errors.labels(namespace, name).inc()
        raise kopf.TemporaryError(f"pool {name}: {exc}",
                                  delay=rt.settings.probe_interval_seconds) from exc
    workers = after_changes(entries, deleted, created)
    applied = _as_applied(decision, len(created), [n for n in deleted if n in decision.remove])
    status = worker_status(selector=selector_for(name), decision=applied, workers=workers, queue_depth=queued,
                           previous=body.get("status"), generation=meta.get("generation"), now=now)
    previous_conditions = (body.get("status") or {}).get("conditions")
    status["conditions"] = capacity_conditions(status["conditions"], capacity, now, meta.get("generation"))
    if _changed(body.get("status") or {}, status):
        patch.status.update(status)
    rt.metrics.observe_pool(namespace, name, [w.state for w in workers], applied.desired, queued)
    rt.metrics.observe_capacity(capacity)
    _announce(rt, body, decision, created, deleted)
    _announce_capacity(body, capacity, previous_conditions)


async def _sync_registry(
    rt: Runtime, publisher: PoolPublisher, spec: ComfyUIWorkerSpec, uid: str, namespace: str,
    pods: list[ObservedPod],
) -> tuple[dict[str, Any], dict[str, str]]:
    """Publish serving pods, withdraw the rest, probe; return (pod -> health, pod -> leased job)."""
    fresh = await publish_and_probe(rt, publisher, spec, uid, namespace, pods)
    ids = {endpoint_id_for(namespace, p.name): p.name for p in pods}
    leases = await asyncio.to_thread(publisher.leases, list(ids))
    health = {p.name: endpoint_health(fresh.get(endpoint_id_for(namespace, p.name))) for p in pods}
    jobs = {ids[endpoint_id]: job for endpoint_id, job in leases.items()}
    return health, jobs


async def publish_and_probe(
    rt: Runtime, publisher: PoolPublisher, spec: ComfyUIWorkerSpec, uid: str, namespace: str,
    pods: list[ObservedPod], only_unhealthy: bool = False,
) -> dict[str, Endpoint]:
    """Publish serving pods, withdraw the rest, probe them (only_unhealthy: only the ones not yet healthy,
    as the pod watch does between timer ticks); return the pool's published endpoints after the probes."""
    serving = {endpoint_id_for(namespace, p.name): endpoint_url(p.ip, p.port) for p in pods if p.serving and p.ip}
    known = await asyncio.to_thread(publisher.published)
    stale = stale_endpoints(known, serving)
    if stale:
        await asyncio.to_thread(publisher.withdraw, stale)
    endpoints = await asyncio.to_thread(publisher.publish, serving, known, spec.prefetch)
    monitor = rt.monitor_for(uid, spec.probe)
    monitor.retain(set(endpoints))
    wave = asyncio.Semaphore(PROBE_CONCURRENCY)

    async def probe(endpoint: Endpoint) -> None:
        async with wave:
            await monitor.probe(endpoint)

    await asyncio.gather(*(probe(e) for e in endpoints.values() if not (only_unhealthy and e.healthy)))
    return await asyncio.to_thread(publisher.refresh, list(endpoints))


async def _apply(
    rt: Runtime, body: kopf.Body, spec: ComfyUIWorkerSpec, publisher: PoolPublisher, decision: ScaleDecision
) -> tuple[list[str], list[str]]:
    """Delete replaced and removed pods, create missing ones; return (deleted names, created names)."""
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    deleted: list[str] = []
    for pod in decision.replace:
        await asyncio.to_thread(publisher.withdraw, [endpoint_id_for(namespace, pod)])
        await rt.kube.delete_pod(namespace, pod)
        deleted.append(pod)
    for pod in decision.remove:
        # Withdrawn under the scheduler's lock only while it holds no lease: a pod that picked up a
        # job since the decision stays (the next pass decides again).
        if await asyncio.to_thread(publisher.withdraw_if_idle, endpoint_id_for(namespace, pod)):
            await rt.kube.delete_pod(namespace, pod)
            deleted.append(pod)
    created = await create_pods(rt, body, spec, decision.create)
    replaced = len(decision.replace)
    rt.metrics.count_actions(namespace, name, created=max(0, len(created) - replaced),
                             removed=len(deleted) - replaced, replaced=replaced)
    return deleted, created


async def create_pods(rt: Runtime, body: Mapping[str, Any], spec: ComfyUIWorkerSpec, count: int) -> list[str]:
    """Create count pods of the pool; return their names.

    In slow-start batches, as Kubernetes' ReplicaSet controller creates pods: 1, 2, 4, … at once, at most
    CREATE_BATCH_MAX. A pool of hundreds comes up in a couple of seconds instead of one API round trip
    after another, and a create the API refuses (quota, admission) fails a small batch, not hundreds of
    calls: the first error is raised after its batch ends, and the next pass carries on from what exists.
    """
    created: list[str] = []
    for size in slow_start_batches(count, CREATE_BATCH_MAX):
        results = await asyncio.gather(*(_create_pod(rt, body, spec) for _ in range(size)), return_exceptions=True)
        created += [r for r in results if isinstance(r, str)]
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
        if None in results:  # no free random name in CREATE_ATTEMPTS tries: leave it to the next pass
            break
    return created


async def _create_pod(rt: Runtime, body: Mapping[str, Any], spec: ComfyUIWorkerSpec) -> str | None:
    """Create one pod under a fresh random name (a name that exists already is retried); its name, or None."""
    meta = body["metadata"]
    for _attempt in range(CREATE_ATTEMPTS):
        pod_name = pod_name_for(meta["name"])
        if await rt.kube.create_owned(build_worker_pod(meta["name"], meta["namespace"], spec, pod_name, meta["uid"])):
            return pod_name
    return None


async def _dispatch_capacity(publisher: PoolPublisher, now: float) -> CapacityVerdict:
    """Live dispatch slots against the slots every ready endpoint of the fleet needs (after this pass's probes)."""
    dispatchers = await asyncio.to_thread(publisher.dispatchers, now)
    demand = await asyncio.to_thread(publisher.fleet_demand)
    return assess_capacity(live_slots(dispatchers, now), demand)


def _announce_capacity(body: kopf.Body, verdict: CapacityVerdict, previous: list[dict[str, Any]] | None) -> None:
    """A log line and an event when the pool's DispatchCapacity verdict changes (loud when slots run short)."""
    if not capacity_news(previous, verdict):
        return
    pool = f"{body['metadata']['namespace']}/{body['metadata']['name']}"
    if verdict.enough:
        log.info("pool %s: dispatch capacity is enough again: %s", pool, verdict.message)
        kopf.info(body, reason=verdict.reason, message=verdict.message)
    else:
        log.warning("pool %s: NOT ENOUGH DISPATCH CAPACITY (%s): %s", pool, verdict.reason, verdict.message)
        kopf.warn(body, reason=verdict.reason, message=verdict.message)


def _as_applied(decision: ScaleDecision, created: int, removed: list[str]) -> ScaleDecision:
    """The decision as carried out (a pod that turned busy is kept), for status and events."""
    if created == decision.create and len(removed) == len(decision.remove):
        return decision
    return ScaleDecision(decision.target, decision.desired, decision.current, created, tuple(removed),
                         decision.replace, decision.reason)


def _announce(rt: Runtime, body: kopf.Body, decision: ScaleDecision, created: list[str], deleted: list[str]) -> None:
    """Kubernetes events for what this pass did (kubectl describe comfyuiworker/NAME)."""
    if decision.replace:
        kopf.warn(body, reason="PodsReplaced", message=f"replaced {', '.join(decision.replace)}; {decision.reason}")
    removed = [n for n in deleted if n not in decision.replace]
    added = len(created) - len(decision.replace)
    if added > 0:
        kopf.info(body, reason="ScaledUp", message=f"created {', '.join(created)}; {decision.reason}")
    if removed:
        kopf.info(body, reason="ScaledDown", message=f"deleted idle {', '.join(removed)}; {decision.reason}")


def _changed(current: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    return any(current.get(key) != value for key, value in new.items())

