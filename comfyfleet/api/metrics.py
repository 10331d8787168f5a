"""Prometheus metrics: request figures from the API, fleet figures read from Redis at scrape time, and the
job-level figures of what this process settles itself (jobs cancelled while queued)."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from comfyfleet.api.events import StreamGate
from comfyfleet.dispatch.service import Dispatcher
from comfyfleet.observability.fleet import FleetCollector
from comfyfleet.observability.metrics import JobMetrics, configure_sink
from comfyfleet.store.jobevents import EventHub


class Metrics:
    def __init__(self, dispatcher: Dispatcher | None):
        """dispatcher None: no fleet figures (the metric catalogue lists those from fleet_families)."""
        self.registry = CollectorRegistry()
        self.requests = Counter("comfyfleet_http_requests", "HTTP requests", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("comfyfleet_http_request_duration_seconds", "HTTP request latency",
                                 ["method", "route"], registry=self.registry)
        if dispatcher is not None:
            self.registry.register(FleetCollector(dispatcher))
        # Cancels of queued jobs are settled here, not by a dispatcher: this process exports them itself.
        self.jobs = JobMetrics(self.registry)
        configure_sink(self.jobs)


class MetricsMiddleware:
    """Counts requests by route template (not raw path, to keep label cardinality bounded)."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.metrics.requests.labels(scope["method"], path, str(status["code"])).inc()
            self.metrics.latency.labels(scope["method"], path).observe(time.perf_counter() - started)


class BodyLimitMiddleware:
    """Refuse request bodies over max_bytes with 413, whether or not Content-Length is sent."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        try:
            await self.app(scope, limited_receive, send)
        except BodyTooLarge:
            await self._too_large(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Built only when needed: a JSONResponse per request was 7 % of the front door's time.
        from starlette.responses import JSONResponse

        from comfyfleet.api.errors import error_body

        response = JSONResponse(error_body("payload_too_large", f"request body is larger than {self.max_bytes} bytes",
                                           {"field": "body", "limit": self.max_bytes}), status_code=413)
        await response(scope, receive, send)


class BodyTooLarge(StarletteHTTPException):
    """An HTTPException, so FastAPI's body parsing re-raises it as 413 instead of turning it into a 400
    (reliability: a chunked body over the limit answered 400)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(status_code=413, detail=f"request body is larger than {max_bytes} bytes")
        self.details = {"field": "body", "limit": max_bytes}


class StreamCollector(Collector):
    """Job event streams of this API process (SSE and WebSocket), read at scrape time."""

    def __init__(self, streams: StreamGate, hub: EventHub):
        self.streams = streams
        self.hub = hub

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield GaugeMetricFamily("comfyfleet_api_streams_open", "Job event streams (SSE and WebSocket) open now",
                                value=sum(self.streams.open.values()))
        yield CounterMetricFamily("comfyfleet_api_streams_refused",
                                  "Streams refused at the per-user limit (max_streams_per_user)",
                                  value=self.streams.refused)
        yield CounterMetricFamily("comfyfleet_api_event_subscription_reconnects",
                                  "Times this process's one job-event subscription was lost and renewed",
                                  value=self.hub.reconnects)
