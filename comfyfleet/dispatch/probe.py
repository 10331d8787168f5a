"""The dispatcher's own HTTP port: /healthz for the liveness probe, /metrics for Prometheus."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from comfyfleet.dispatch.engine import Engine

log = logging.getLogger(__name__)


class EngineCollector(Collector):
    """Figures read from the engine at scrape time."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        e = self.engine
        yield GaugeMetricFamily("comfyfleet_dispatcher_slots", "Jobs this dispatcher may run at once", value=e.slots)
        yield GaugeMetricFamily("comfyfleet_dispatcher_in_flight", "Jobs this dispatcher runs now",
                                value=len(e.tasks))
        yield GaugeMetricFamily("comfyfleet_dispatcher_endpoints_held",
                                "Endpoints held until ComfyUI lets go of an interrupted prompt", value=len(e.holding))
        s = e.d.scheduler
        yield CounterMetricFamily("comfyfleet_dispatch_claim_passes", "Claim passes run under the scheduler lock",
                                  value=s.passes)
        yield CounterMetricFamily("comfyfleet_dispatch_claims", "Jobs assigned to an endpoint", value=s.claimed)
        yield CounterMetricFamily("comfyfleet_dispatch_lock_held_seconds",
                                  "Seconds this dispatcher held the scheduler lock (rate = fraction of time held)",
                                  value=s.lock_held_seconds)


class ProbeServer:
    def __init__(self, engine: Engine, host: str, port: int):
        self.engine = engine
        self.host = host
        self.port = port
        self.registry = CollectorRegistry()
        self.registry.register(EngineCollector(engine))
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        if not self.port:
            return
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        log.info("dispatcher probes on http://%s:%d (/healthz, /metrics)", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def healthz(self, request: web.Request) -> web.Response:
        ok, body = self.engine.health()
        return web.json_response(body, status=200 if ok else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        data = generate_latest(self.registry) + generate_latest(REGISTRY)
        return web.Response(body=data, content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})
