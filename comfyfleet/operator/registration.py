"""The operator's pod watch: a pool's pods are published for dispatch as soon as the kubelet says Ready.

Without it a pod that turns Ready waits for its pool's next timer tick (up to the probe interval, 5 s by
default) before it is published, probed and given jobs; a pool of hundreds of pods coming up over a few
seconds is registered in as many ticks. Here kopf watches the worker pods (server-side label selector,
see main.py); every event goes to `RegistrationReaction.notice`, which asks `readiness.ReadinessTracker`
whether the pod started or stopped serving. Changed pools are registered in batches: the first change
wakes the loop, which waits `REGISTRATION_DEBOUNCE_SECONDS` for the pods turning Ready with it, then runs
one pass per pool under the pool's lock (the same as the timer's):

1. re-read the ComfyUIWorker (a deleted or replaced one is skipped) and list its pods;
2. publish serving pods, withdraw the others, and probe only the endpoints not healthy yet
   (`workers.publish_and_probe`): a pod is registered for dispatch once its first probe passes.

Scaling, replacements and status stay on the timer; this pass only keeps the registry in step with
pod readiness between ticks. Started by a kopf startup handler, cancelled at cleanup.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf
import redis
from pydantic import ValidationError

from comfyfleet.operator.builders import selector_for
from comfyfleet.operator.k8s import KubeError
from comfyfleet.operator.models import ComfyUIWorkerSpec
from comfyfleet.operator.pods import observe_pod, owned_by
from comfyfleet.operator.publish import PoolPublisher
from comfyfleet.operator.readiness import PoolRef, ReadinessTracker, pod_signal
from comfyfleet.operator.runtime import Runtime, stop_memo_task
from comfyfleet.operator.workers import publish_and_probe

log = logging.getLogger(__name__)

# Readiness changes within this window share one pass: a pool coming up pod by pod is published in
# batches (one pod list, one registry read per batch), and a pod waits at most this long for its pass.
REGISTRATION_DEBOUNCE_SECONDS = 0.2
# After a failed pass (API or Redis hiccup) the pool is tried again after this long; the timer covers it too.
RETRY_SECONDS = 1.0


class RegistrationReaction:
    """Pod readiness changes -> batched publish passes per pool."""

    def __init__(self, rt: Runtime, debounce: float = REGISTRATION_DEBOUNCE_SECONDS):
        self.rt = rt
        self.debounce = debounce
        self.tracker = ReadinessTracker()
        self.pending: dict[str, PoolRef] = {}  # pool uid -> pool
        self.woken = asyncio.Event()
        self.passes = 0

    def notice(self, event_type: str | None, pod: Any) -> None:
        """One watch event of a worker pod (cheap: the pass runs later, in the reaction's task)."""
        deleted = event_type == "DELETED"
        signal = pod_signal(pod, deleted=deleted)
        if signal is not None and self.tracker.changed(signal, deleted=deleted):
            self.pending[signal.pool.uid] = signal.pool
            self.woken.set()

    async def run(self) -> None:
        """Register changed pools until cancelled."""
        while True:
            await self.woken.wait()
            await asyncio.sleep(self.debounce)  # the pods turning Ready with this one join its batch
            self.woken.clear()
            pools, self.pending = list(self.pending.values()), {}
            results = await asyncio.gather(*(self.register(pool) for pool in pools), return_exceptions=True)
            for pool, result in zip(pools, results, strict=True):
                if isinstance(result, (KubeError, redis.RedisError, OSError)):
                    log.warning("pool %s/%s: registering its pods failed (%s); retrying", pool.namespace, pool.name,
                                result)
                    self._retry(pool)
                elif isinstance(result, BaseException):
                    log.error("pool %s/%s: registering its pods failed", pool.namespace, pool.name, exc_info=result)
                    self._retry(pool)

    def _retry(self, pool: PoolRef) -> None:
        def again() -> None:
            self.pending.setdefault(pool.uid, pool)
            self.woken.set()

        asyncio.get_running_loop().call_later(RETRY_SECONDS, again)

    async def register(self, pool: PoolRef) -> int:
        """One pass over a pool: publish, withdraw, probe the new; returns how many endpoints are healthy."""
        self.passes += 1
        rt = self.rt
        async with rt.lock_for(pool.uid):
            body = await rt.kube.read_worker(pool.namespace, pool.name)
            if body is None or body["metadata"]["uid"] != pool.uid or body["metadata"].get("deletionTimestamp"):
                return 0  # gone (its delete handler withdraws everything) or replaced by a new pool of that name
            try:
                spec = ComfyUIWorkerSpec.from_body(body)
            except ValidationError:
                return 0  # invalid: the event handlers report it, and there is nothing to publish
            listed = await rt.kube.list_pods(pool.namespace, selector_for(pool.name))
            pods = [observe_pod(p, spec.port) for p in listed if owned_by(p, pool.uid)]
            publisher = PoolPublisher(rt.dispatcher, pool.namespace, pool.name)
            fresh = await publish_and_probe(rt, publisher, spec, pool.uid, pool.namespace, pods, only_unhealthy=True)
        return sum(1 for e in fresh.values() if e.healthy)


# ---------------------------------------------------------------------------------------------
# Handlers (registered in main.py)


async def worker_pod_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Every watch event of a worker pod: hand it to the reaction (if it runs)."""
    reaction: RegistrationReaction | None = getattr(memo, "registration", None)
    if reaction is not None:
        reaction.notice(type, body)


async def registration_startup(memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Start the registration reaction in the background (one per operator process)."""
    reaction = RegistrationReaction(memo.runtime)
    memo.registration = reaction
    memo.registration_task = asyncio.create_task(reaction.run(), name="pod-registration")
    logger.info("pod registration: publishing pods as they turn Ready (batches of %ss)", reaction.debounce)


async def stop_registration(memo: kopf.Memo) -> None:
    """Cancel the registration task, if one runs, and wait for it to end."""
    await stop_memo_task(memo, "registration_task")
    memo.registration = None
