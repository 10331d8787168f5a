"""Probe every registered ComfyUI endpoint on an interval and keep the registry's health current."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from comfyfleet.comfy.client import ComfyClient
from comfyfleet.comfy.errors import ComfyError
from comfyfleet.dispatch.registry import Endpoint, Registry
from comfyfleet.dispatch.scheduler import Scheduler

log = logging.getLogger(__name__)

# Refresh the model lists and node catalog every N healthy probes (object_info is ~100 ms on real ComfyUI).
CATALOG_REFRESH_EVERY = 12


class HealthMonitor:
    def __init__(self, registry: Registry, scheduler: Scheduler, *, interval: float, timeout: float,
                 unhealthy_after: int):
        self.registry = registry
        self.scheduler = scheduler
        self.interval = interval
        self.timeout = timeout
        self.unhealthy_after = unhealthy_after
        self._probes: dict[str, int] = {}
        # One client (one kept-alive connection) per endpoint: a probe is two small requests, and a new client
        # per probe cost a TCP connection and a session on both sides, for 200 pods 40 times a second.
        self._clients: dict[str, ComfyClient] = {}

    async def run_forever(self) -> None:
        try:
            while True:
                started = time.monotonic()
                try:
                    await self.probe_all()
                except Exception:  # noqa: BLE001 - a monitor that dies silently would freeze the fleet's health
                    log.exception("health probe round failed")
                await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))
        finally:
            await self.close()

    async def probe_all(self) -> None:
        endpoints = await asyncio.to_thread(self.registry.endpoints)
        self.retain({e.id for e in endpoints})
        await asyncio.gather(*(self.probe(e) for e in endpoints))

    def _client(self, endpoint: Endpoint) -> ComfyClient:
        client = self._clients.get(endpoint.id)
        if client is None or client.base_url != endpoint.url.rstrip("/") or client.timeout != self.timeout:
            if client is not None:
                self._drop(endpoint.id)
            client = self._clients[endpoint.id] = ComfyClient(endpoint.url, timeout=self.timeout)
        return client

    def _drop(self, endpoint_id: str) -> None:
        client = self._clients.pop(endpoint_id, None)
        if client is not None:
            task = asyncio.get_running_loop().create_task(client.close())
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # closing is best effort

    def retain(self, endpoint_ids: set[str]) -> None:
        """Close the clients of endpoints no longer probed (withdrawn or replaced pods)."""
        for endpoint_id in [i for i in self._clients if i not in endpoint_ids]:
            self._drop(endpoint_id)

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            with contextlib.suppress(Exception):
                await client.close()

    async def probe(self, endpoint: Endpoint) -> bool:
        """One probe: /system_stats and /queue; models and catalog when new or due. True if healthy."""
        count = self._probes.get(endpoint.id, 0)
        refresh = (not endpoint.healthy) or count % CATALOG_REFRESH_EVERY == 0
        try:
            client = self._client(endpoint)
            try:
                stats = await client.system_stats()
                queue = await client.queue()
                models = catalog = None
                if refresh:
                    catalog = await client.object_info()
                    models = await client.available_models()
            except (ComfyError, OSError, ValueError):
                self._drop(endpoint.id)  # the next probe starts on a fresh connection
                raise
            foreign = await asyncio.to_thread(self._foreign_prompts, endpoint.id, queue.running + queue.pending)
            if foreign:
                raise PodBusyElsewhere(foreign)
        except (ComfyError, OSError, ValueError) as exc:
            failures = await asyncio.to_thread(
                self.registry.record_probe_failed, endpoint.id, str(exc) or type(exc).__name__, self.unhealthy_after
            )
            if endpoint.healthy and failures >= self.unhealthy_after:
                log.warning("endpoint %s (%s) is unhealthy: %s", endpoint.id, endpoint.url, exc)
            return False
        self._probes[endpoint.id] = count + 1
        info = _info(stats)
        await asyncio.to_thread(
            self.registry.record_probe_ok, endpoint.id,
            checkpoints=models.checkpoints if models else None, loras=models.loras if models else None,
            queue_remaining=len(queue.running) + len(queue.pending), info=info,
        )
        if catalog is not None:
            await asyncio.to_thread(self.registry.store_catalog, endpoint.id, catalog)
        if not endpoint.healthy:
            log.info("endpoint %s (%s) is healthy", endpoint.id, endpoint.url)
            await asyncio.to_thread(self.scheduler.wake)
        return True


    def _foreign_prompts(self, endpoint_id: str, prompt_ids: list[str]) -> list[str]:
        """Prompts on the pod that none of our live jobs accounts for: a prompt we gave up on (a timeout or cancel
        the pod never honoured, so it is wedged) or another client's work. New jobs would queue behind it, so
        such a pod counts as a failed probe until its queue is clear again. A prompt of a job that is still in
        flight on this pod (its dispatcher died; the adopter re-attaches to it) is ours, not foreign; a prompt of a
        job already settled (cancelled or timed out while ComfyUI could not leave its node) is wedged, even while
        its dispatcher still holds the pod's lease waiting for it to end."""
        if not prompt_ids:
            return []
        jobs = self.scheduler.repo.get_many(prompt_ids)
        return [p for p, job in zip(prompt_ids, jobs, strict=True)
                if job is None or job.state.is_terminal or job.endpoint != endpoint_id]


class PodBusyElsewhere(ComfyError):
    def __init__(self, prompt_ids: list[str]):
        super().__init__(f"ComfyUI is running prompts comfyfleet is not tracking ({', '.join(prompt_ids[:3])}): "
                         "a prompt given up on (cancelled or timed out) that the pod has not let go of yet, or "
                         "another client's")
        self.prompt_ids = prompt_ids


def _info(stats: dict[str, Any]) -> dict[str, Any]:
    system = stats.get("system", {}) if isinstance(stats, dict) else {}
    devices = stats.get("devices", []) if isinstance(stats, dict) else []
    device = devices[0] if devices else {}
    return {
        "comfyui_version": system.get("comfyui_version"),
        "device": device.get("name"),
        "vram_total": device.get("vram_total"),
        "vram_free": device.get("vram_free"),
    }
