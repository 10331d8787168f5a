"""Prometheus metrics: request figures from the API, fleet figures read from Redis at scrape time."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from comfyfleet.dispatch.service import Dispatcher


class FleetCollector(Collector):
    """Queue depth, job totals and worker states, straight from Redis on each scrape."""

    def __init__(self, dispatcher: Dispatcher):
        self.dispatcher = dispatcher

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        stats = self.dispatcher.stats()
        waiting = GaugeMetricFamily("comfyfleet_queue_waiting", "Jobs waiting in the queue", labels=["priority"])
        for priority, count in stats.waiting_by_priority.items():
            waiting.add_metric([str(priority)], count)
        yield waiting
        yield GaugeMetricFamily("comfyfleet_jobs_active", "Jobs running on a worker", value=stats.active)
        yield GaugeMetricFamily("comfyfleet_jobs_retrying", "Jobs waiting for a retry", value=stats.retrying)
        finished = CounterMetricFamily("comfyfleet_jobs_finished", "Jobs that reached a final state", labels=["state"])
        for state, value in (("succeeded", stats.completed), ("failed", stats.failed), ("cancelled", stats.cancelled)):
            finished.add_metric([state], value)
        yield finished
        yield CounterMetricFamily("comfyfleet_jobs_created", "Jobs accepted", value=stats.created)
        candidates = self.dispatcher.registry.candidates()
        workers = GaugeMetricFamily("comfyfleet_workers", "ComfyUI endpoints by state", labels=["state"])
        workers.add_metric(["ready"], sum(1 for c in candidates if c.healthy and not c.busy))
        workers.add_metric(["busy"], sum(1 for c in candidates if c.healthy and c.busy))
        workers.add_metric(["unhealthy"], sum(1 for c in candidates if not c.healthy))
        yield workers


class Metrics:
    def __init__(self, dispatcher: Dispatcher):
        self.registry = CollectorRegistry()
        self.requests = Counter("comfyfleet_http_requests", "HTTP requests", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("comfyfleet_http_request_duration_seconds", "HTTP request latency",
                                 ["method", "route"], registry=self.registry)
        self.registry.register(FleetCollector(dispatcher))


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
        from starlette.responses import JSONResponse

        from comfyfleet.api.errors import error_body

        too_large = JSONResponse(
            error_body("payload_too_large", f"request body is larger than {self.max_bytes} bytes",
                       {"field": "body", "limit": self.max_bytes}), status_code=413)
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await too_large(scope, receive, send)
                return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge(self.max_bytes)
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            await too_large(scope, receive, send)


class _BodyTooLarge(StarletteHTTPException):
    """An HTTPException, so FastAPI's body parsing re-raises it as 413 instead of turning it into a 400
    (reliability: a chunked body over the limit answered 400)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(status_code=413, detail=f"request body is larger than {max_bytes} bytes")
        self.details = {"field": "body", "limit": max_bytes}
