"""What every handler shares: settings, the dispatcher, the Kubernetes gateway, metrics, per-pool state.

One `Runtime` is built by `main.run()` and handed to kopf as `memo.runtime`. Nothing in it is the
source of truth for anything: pods come from the API server and jobs/endpoints from Redis on every
pass, so a restarted operator re-derives everything. The per-pool locks only serialise the event
handlers and the timer of one pool inside this process (kopf runs them concurrently), so two passes
never both see a pod missing and both create one.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import redis

from comfyfleet.dispatch.health import HealthMonitor
from comfyfleet.dispatch.service import Dispatcher
from comfyfleet.operator.job_spec import JobDefaults
from comfyfleet.operator.k8s import KubeGateway, load_api_client
from comfyfleet.operator.metrics import OperatorMetrics
from comfyfleet.operator.models import ProbeSpec
from comfyfleet.settings import DispatchSettings, OperatorSettings


@dataclass
class Runtime:
    settings: OperatorSettings
    dispatcher: Dispatcher
    kube: KubeGateway
    metrics: OperatorMetrics
    job_defaults: JobDefaults
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    _monitors: dict[str, HealthMonitor] = field(default_factory=dict)

    @classmethod
    def create(cls, settings: OperatorSettings) -> Runtime:
        """Connect to Redis (lazily, on first use) and load the operator's Kubernetes credentials."""
        # Job defaults (timeout, attempts, retry backoff) are the dispatcher's settings, read from the
        # same COMFYFLEET_* environment, so jobs from kubectl and from the API get the same ones.
        dispatch = DispatchSettings(redis_url=settings.redis_url, redis_prefix=settings.redis_prefix)
        dispatcher = Dispatcher(redis.Redis.from_url(settings.redis_url), dispatch)
        defaults = JobDefaults(max_attempts=dispatch.max_attempts, timeout_seconds=dispatch.job_timeout_seconds)
        return cls(settings, dispatcher, KubeGateway(load_api_client()), OperatorMetrics(), defaults)

    def lock_for(self, uid: str) -> asyncio.Lock:
        """The lock that serialises reconcile passes of one ComfyUIWorker (by metadata.uid)."""
        return self._locks.setdefault(uid, asyncio.Lock())

    def monitor_for(self, uid: str, probe: ProbeSpec) -> HealthMonitor:
        """The pool's prober (the dispatcher's HealthMonitor), with the pool's current probe settings."""
        monitor = self._monitors.get(uid)
        if monitor is None:
            monitor = HealthMonitor(self.dispatcher.registry, self.dispatcher.scheduler,
                                    interval=self.settings.probe_interval_seconds,
                                    timeout=probe.timeout_seconds, unhealthy_after=probe.failure_threshold)
            self._monitors[uid] = monitor
        monitor.timeout = probe.timeout_seconds
        monitor.unhealthy_after = probe.failure_threshold
        return monitor

    async def forget(self, uid: str) -> None:
        """Drop a deleted pool's lock and prober (closing the prober's connections)."""
        self._locks.pop(uid, None)
        monitor = self._monitors.pop(uid, None)
        if monitor is not None:
            await monitor.close()

    def close(self) -> None:
        self.kube.close()
        self.dispatcher.conn.close()


async def stop_memo_task(memo: Any, name: str) -> None:
    """Cancel the background task kept on the operator's memo under `name`, if one runs, and wait for its end."""
    task: asyncio.Task[None] | None = getattr(memo, name, None)
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    setattr(memo, name, None)
