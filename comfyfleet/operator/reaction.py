"""The operator's reaction to queue changes: autoscaled pools scale up on the dispatch wake-ups.

The dispatch side publishes on `keys.wake` whenever a job is queued or a pod frees
(`Scheduler.wake`). One `ScaleUpReaction` per operator process holds one subscription to that
channel; a wake-up (several within `scale_up_debounce_seconds` count as one) runs a fast pass:

1. read the queue per pool (`Dispatcher.queued_by_pool`: queued + parked, None = any pool);
2. list the ComfyUIWorkers and keep the autoscaled ones with work the last status cannot cover
   (`scale_up.worth_a_look`);
3. per pool, under the same per-pool lock as the timer pass (`Runtime.lock_for`): re-read the pool
   (a deleted or replaced one is skipped), list its pods and leases, let
   `scale_up.scale_up_decision` choose, and create the missing pods (never delete anything).

Everything else (probes, publishing, scale-down after the idle time, replacements, status) stays
on the kopf timer. Started by a kopf startup handler and cancelled at cleanup (see main.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

import kopf
import redis
from pydantic import ValidationError

from comfyfleet.operator.builders import selector_for
from comfyfleet.operator.k8s import KubeError
from comfyfleet.operator.models import ComfyUIWorkerSpec
from comfyfleet.operator.pods import endpoint_id_for, observe_pod, owned_by, queue_depth
from comfyfleet.operator.publish import PoolPublisher
from comfyfleet.operator.runtime import Runtime, stop_memo_task
from comfyfleet.operator.scale_up import scale_up_decision, wake_views, worth_a_look
from comfyfleet.operator.workers import create_pods
from comfyfleet.redisconn import async_redis

log = logging.getLogger(__name__)

# Seconds between reconnects after the subscription or a pass failed (Redis restarting, API hiccup);
# the timer keeps scaling meanwhile, so there is no hurry.
RETRY_SECONDS = 1.0
# get_message timeout: how often the listener checks it is still wanted when nothing is published.
LISTEN_POLL_SECONDS = 5.0


class ScaleUpReaction:
    """One Redis subscription to the dispatch wake-ups and the scale-up passes they trigger."""

    def __init__(self, rt: Runtime):
        self.rt = rt
        self.keys = rt.dispatcher.keys
        self.debounce = rt.settings.scale_up_debounce_seconds
        self.woken = asyncio.Event()
        self.passes = 0

    async def run(self) -> None:
        """Listen and react until cancelled."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._listen())
            group.create_task(self._react())

    async def _listen(self) -> None:
        while True:
            conn = async_redis(self.rt.settings.redis_url, socket_connect_timeout=5)
            pubsub = conn.pubsub()
            try:
                await pubsub.subscribe(self.keys.wake)
                self.woken.set()  # jobs may have been queued while we were not listening
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=LISTEN_POLL_SECONDS)
                    if message is not None:
                        self.woken.set()
            except (redis.RedisError, OSError) as exc:
                log.warning("scale-up reaction: wake-up subscription lost (%s); reconnecting", exc)
            finally:
                with contextlib.suppress(redis.RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                    await conn.aclose()
            await asyncio.sleep(RETRY_SECONDS)

    async def _react(self) -> None:
        while True:
            await self.woken.wait()
            # Let the rest of a burst arrive: one pass serves all the wake-ups of this window.
            await asyncio.sleep(self.debounce)
            self.woken.clear()
            try:
                await self.scale_up_pass()
            except (KubeError, redis.RedisError, OSError) as exc:
                log.warning("scale-up reaction: pass failed (%s); the timer pass scales meanwhile", exc)
                await asyncio.sleep(RETRY_SECONDS)
            except Exception:  # noqa: BLE001 - a bug in one pass must not end the reaction for good
                log.exception("scale-up reaction: pass failed")
                await asyncio.sleep(RETRY_SECONDS)

    async def scale_up_pass(self) -> dict[str, list[str]]:
        """One pass over the autoscaled pools; returns `namespace/pool` -> names of the pods created."""
        self.passes += 1
        queued = await asyncio.to_thread(self.rt.dispatcher.queued_by_pool)
        if not any(queued.values()):
            return {}
        pools = []
        for body in await self.rt.kube.list_workers(self.rt.settings.namespace):
            meta = body["metadata"]
            spec = _spec_or_none(body)
            if spec is None or meta.get("deletionTimestamp"):
                continue
            if worth_a_look(spec, queue_depth(queued, meta["name"]), body.get("status")):
                pools.append(body)
        created = await asyncio.gather(*(self._scale_up(body, queued) for body in pools))
        return {f"{b['metadata']['namespace']}/{b['metadata']['name']}": c for b, c in zip(pools, created, strict=True)
                if c}

    async def _scale_up(self, listed: Mapping[str, Any], queued: dict[str | None, int]) -> list[str]:
        meta = listed["metadata"]
        name, namespace, uid = meta["name"], meta["namespace"], meta["uid"]
        lock = self.rt.lock_for(uid)
        waited = lock.locked()
        async with lock:
            # Re-read under the lock: a pool deleted (or deleted and re-created) since the list is never scaled.
            body = await self.rt.kube.read_worker(namespace, name)
            if body is None or body["metadata"]["uid"] != uid or body["metadata"].get("deletionTimestamp"):
                return []
            spec = _spec_or_none(body)
            if spec is None:
                return []
            publisher = PoolPublisher(self.rt.dispatcher, namespace, name)
            if waited:  # a timer pass ran meanwhile and may have served part of the queue
                queued = await asyncio.to_thread(publisher.queued_by_pool)
            listed_pods = await self.rt.kube.list_pods(namespace, selector_for(name))
            pods = [observe_pod(p, spec.port) for p in listed_pods if owned_by(p, uid)]
            leases = await asyncio.to_thread(publisher.leases, [endpoint_id_for(namespace, p.name) for p in pods])
            busy = {endpoint_id.split("/", 1)[1] for endpoint_id in leases}
            decision = scale_up_decision(spec, queue_depth(queued, name), wake_views(pods, busy), time.time())
            if not decision.create:
                return []
            created = await create_pods(self.rt, body, spec, decision.create)
        if created:
            self.rt.metrics.count_actions(namespace, name, created=len(created), removed=0, replaced=0)
            log.info("pool %s/%s: created %s; %s", namespace, name, ", ".join(created), decision.reason)
            try:
                await self.rt.kube.post_event(body, "ScaledUp", f"created {', '.join(created)}; {decision.reason}")
            except KubeError as exc:
                log.warning("pool %s/%s: could not post the ScaledUp event: %s", namespace, name, exc)
        return created


def _spec_or_none(body: Mapping[str, Any]) -> ComfyUIWorkerSpec | None:
    """The pool's spec, or None when invalid (the event handlers report that; nothing to scale)."""
    try:
        return ComfyUIWorkerSpec.from_body(body)
    except ValidationError:
        return None


# ---------------------------------------------------------------------------------------------
# Lifecycle handlers (registered in main.py)


async def reaction_startup(memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Start the scale-up reaction in the background (one subscription per operator process)."""
    rt: Runtime = memo.runtime
    if not rt.settings.scale_up_on_wake:
        logger.info("scale-up on queue wake-ups is off: pools scale on the probe timer only")
        return
    if rt.settings.peering_name:
        # Several replicas: only kopf knows which one is active, and every replica would react.
        logger.info("scale-up on queue wake-ups is off with peering: pools scale on the probe timer only")
        return
    memo.reaction_task = asyncio.create_task(ScaleUpReaction(rt).run(), name="scale-up-reaction")
    logger.info("scale-up reaction: listening for queue wake-ups (debounce %ss)", rt.settings.scale_up_debounce_seconds)


async def stop_reaction(memo: kopf.Memo) -> None:
    """Cancel the reaction task, if one runs, and wait for it to end."""
    await stop_memo_task(memo, "reaction_task")
