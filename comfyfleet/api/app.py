"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import redis
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.middleware.cors import CORSMiddleware
from starlette.types import Receive, Scope, Send

from comfyfleet import __version__, gctune
from comfyfleet.api.auth import build_authenticator
from comfyfleet.api.errors import install_error_handlers
from comfyfleet.api.events import StreamGate
from comfyfleet.api.frontdoor import FrontDoor
from comfyfleet.api.metrics import BodyLimitMiddleware, Metrics, MetricsMiddleware, StreamCollector
from comfyfleet.api.routes import fleet, generate, health, jobs, stream
from comfyfleet.api.state import AppState
from comfyfleet.api.tokens import JobTokens, shared_secret
from comfyfleet.dispatch.health import HealthMonitor
from comfyfleet.dispatch.registry import endpoint_id_for_url
from comfyfleet.dispatch.service import Dispatcher
from comfyfleet.fairuse.background import queue_timeout_sweeper
from comfyfleet.observability.tracing import TracingMiddleware, setup_tracing
from comfyfleet.redisconn import async_redis
from comfyfleet.settings import ApiSettings
from comfyfleet.store.factory import output_store
from comfyfleet.store.jobevents import EventHub
from comfyfleet.usage import UsageBook, UsageCollector
from comfyfleet.webhooks.metrics import WebhookCollector  # HOOK(integrations)
from comfyfleet.webhooks.openapi import document_webhooks  # HOOK(integrations)

log = logging.getLogger(__name__)

DASHBOARD_DIR = Path(__file__).parent / "dashboard"


async def _run_in_background(stack: AsyncExitStack, coro: Coroutine[Any, Any, None], name: str) -> None:
    """Run coro as a task until the app stops; then cancel it and wait for it to finish."""
    task = asyncio.create_task(coro, name=name)

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    stack.push_async_callback(stop)


async def _load_job_tokens(state: AppState) -> bool:
    """Read (or create) the access-token secret; False while Redis cannot be reached."""
    settings = state.settings
    try:
        secret = await asyncio.to_thread(shared_secret, state.conn, state.dispatcher.keys, settings.job_access_secret)
    except redis.RedisError as exc:
        log.warning("cannot read the job access secret from Redis yet (%s); retrying", exc)
        return False
    state.job_tokens = JobTokens(secret, settings.job_access_ttl_seconds)
    return True


async def _retry_job_tokens(state: AppState) -> None:
    """Job routes answer 503 until the secret is read; Redis was down when the API started."""
    while not await _load_job_tokens(state):
        await asyncio.sleep(2)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start what the API runs beside its routes; undo it all in reverse order at shutdown."""
    state: AppState = app.state.cf
    settings = state.settings
    dispatcher = state.dispatcher
    async with AsyncExitStack() as stack:
        stack.callback(state.conn.close)
        stack.push_async_callback(state.aconn.aclose)
        stack.push_async_callback(state.batch.aclose)
        if not await _load_job_tokens(state):
            await _run_in_background(stack, _retry_job_tokens(state), "job-access-secret")
        await state.hub.start()
        stack.push_async_callback(state.hub.stop)
        for url in settings.comfyui_urls:
            await asyncio.to_thread(dispatcher.registry.upsert, endpoint_id_for_url(url), url, settings.default_pool,
                                    "static", settings.comfyui_prefetch)
        if settings.run_health_monitor:
            monitor = HealthMonitor(dispatcher.registry, dispatcher.scheduler,
                                    interval=settings.health_interval_seconds,
                                    timeout=settings.probe_timeout_seconds,
                                    unhealthy_after=settings.unhealthy_after_failures)
            await _run_in_background(stack, monitor.run_forever(), "health-monitor")
        if settings.firestore_enabled:  # Firestore write-behind of job records (comfyfleet.store.firestore)
            from comfyfleet.store.firestore import FirestoreMirror, MirrorCollector

            mirror = FirestoreMirror.from_settings(settings, state.conn, dispatcher.repo)
            metrics: Metrics = app.state.metrics
            metrics.registry.register(MirrorCollector(mirror))
            await _run_in_background(stack, mirror.run_forever(), "firestore-mirror")
        await _run_in_background(stack, queue_timeout_sweeper(  # HOOK(reliability): queue timeouts
            dispatcher, settings.queue_timeout_seconds, settings.queue_sweep_interval_seconds),
            "queue-timeouts")
        # Without it each full collection paused the event loop 60-100 ms under load (the front door's p99),
        # and young-generation passes cost ~8 % of a request's CPU.
        gctune.settle()
        yield


class FleetApp(FastAPI):
    """The FastAPI application with the front door's fast path for POST /api/comfyui/generate in front of it."""

    front_door: FrontDoor | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        door = self.front_door
        if door is not None and door.serves(scope):
            await door(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def full_stack(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The application without the fast path: what the front door hands requests it does not serve to."""
        await super().__call__(scope, receive, send)


def create_app(settings: ApiSettings | None = None) -> FleetApp:
    settings = settings or ApiSettings()
    setup_tracing("api", settings)  # off unless COMFYFLEET_OTLP_ENDPOINT is set
    conn = redis.Redis.from_url(settings.redis_url)
    aconn = async_redis(settings.redis_url)
    dispatcher = Dispatcher(conn, settings)
    state = AppState(
        settings=settings, conn=conn, aconn=aconn, dispatcher=dispatcher,
        authenticator=build_authenticator(settings), store=output_store(settings),
        hub=EventHub(aconn, dispatcher.keys), streams=StreamGate(settings.max_streams_per_user),
    )
    app = FleetApp(
        title="comfyfleet",
        version=__version__,
        description="ComfyUI image generation as a service: queue jobs, follow progress, fetch outputs.",
        lifespan=lifespan,
    )
    app.state.cf = state
    app.state.metrics = Metrics(dispatcher)
    app.state.metrics.registry.register(StreamCollector(state.streams, state.hub))
    app.state.metrics.registry.register(UsageCollector(UsageBook(conn, dispatcher.keys)))  # HOOK(reliability)
    app.state.metrics.registry.register(WebhookCollector(conn, dispatcher.keys))  # HOOK(integrations)
    document_webhooks(app)  # HOOK(integrations): the notification request in the OpenAPI document
    install_error_handlers(app, settings.unavailable_retry_after_seconds)  # HOOK(reliability): 503 Retry-After
    for router in (generate.router, jobs.router, stream.router, fleet.router, health.router):
        app.include_router(router)
    app.mount("/dashboard", StaticFiles(directory=DASHBOARD_DIR, html=True), name="dashboard")
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    app.add_middleware(TracingMiddleware)  # around everything but CORS: the request span covers the rest
    if settings.cors_origins:  # outermost, so every answer (errors included) carries the CORS headers
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_credentials=True,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID"],
            expose_headers=["Location", "Retry-After"],
            max_age=600,  # browsers cache a preflight for 10 min (Chromium caps it at 2 h)
        )
    app.front_door = FrontDoor(app.full_stack, state, app.state.metrics)
    return app
