"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
import redis.asyncio as aioredis
from fastapi import FastAPI

from comfyfleet import __version__
from comfyfleet.api.auth import build_authenticator
from comfyfleet.api.errors import install_error_handlers
from comfyfleet.api.metrics import BodyLimitMiddleware, Metrics, MetricsMiddleware
from comfyfleet.api.routes import fleet, generate, health, jobs
from comfyfleet.api.state import AppState
from comfyfleet.dispatch.health import HealthMonitor
from comfyfleet.dispatch.registry import endpoint_id_for_url
from comfyfleet.dispatch.service import Dispatcher
from comfyfleet.fairuse.background import queue_timeout_sweeper
from comfyfleet.settings import ApiSettings
from comfyfleet.store.factory import output_store
from comfyfleet.usage import UsageBook, UsageCollector

log = logging.getLogger(__name__)


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or ApiSettings()
    conn = redis.Redis.from_url(settings.redis_url)
    dispatcher = Dispatcher(conn, settings)
    state = AppState(
        settings=settings, conn=conn, aconn=aioredis.Redis.from_url(settings.redis_url), dispatcher=dispatcher,
        authenticator=build_authenticator(settings), store=output_store(settings),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for url in settings.comfyui_urls:
            await asyncio.to_thread(dispatcher.registry.upsert, endpoint_id_for_url(url), url, settings.default_pool)
        monitor_task = None
        if settings.run_health_monitor:
            monitor = HealthMonitor(dispatcher.registry, dispatcher.scheduler,
                                    interval=settings.health_interval_seconds,
                                    timeout=settings.probe_timeout_seconds,
                                    unhealthy_after=settings.unhealthy_after_failures)
            monitor_task = asyncio.create_task(monitor.run_forever(), name="health-monitor")
        mirror_task = None
        if settings.firestore_enabled:  # Firestore write-behind of job records (comfyfleet.store.firestore)
            from comfyfleet.store.firestore import FirestoreMirror, MirrorCollector

            mirror = FirestoreMirror.from_settings(settings, conn, dispatcher.repo)
            app.state.metrics.registry.register(MirrorCollector(mirror))
            mirror_task = asyncio.create_task(mirror.run_forever(), name="firestore-mirror")
        sweeper = asyncio.create_task(queue_timeout_sweeper(  # HOOK(reliability): queue timeouts
            dispatcher, settings.queue_timeout_seconds, settings.queue_sweep_interval_seconds), name="queue-timeouts")
        try:
            yield
        finally:
            sweeper.cancel()  # HOOK(reliability)
            if mirror_task:
                mirror_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await mirror_task
            if monitor_task:
                monitor_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await monitor_task
            await state.aconn.aclose()
            conn.close()

    app = FastAPI(
        title="comfyfleet",
        version=__version__,
        description="ComfyUI image generation as a service: queue jobs, follow progress, fetch outputs.",
        lifespan=lifespan,
    )
    app.state.cf = state
    app.state.metrics = Metrics(dispatcher)
    app.state.metrics.registry.register(UsageCollector(UsageBook(conn, dispatcher.keys)))  # HOOK(reliability)
    install_error_handlers(app, settings.unavailable_retry_after_seconds)
    for router in (generate.router, jobs.router, fleet.router, health.router):
        app.include_router(router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    return app
