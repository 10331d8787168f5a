"""The simulator's aiohttp application: routes (plain and under /api), middleware, worker startup."""

from __future__ import annotations

from aiohttp import web

from comfyfleet.sim.catalog import Models
from comfyfleet.sim.executor import Faults
from comfyfleet.sim.paths import DataDirs
from comfyfleet.sim.routes import HTTP_ROUTES, post_cleanup
from comfyfleet.sim.server import (
    APP_STATE,
    MAX_UPLOAD_SIZE,
    ServerOptions,
    SimServer,
    cors_middleware,
    origin_only_middleware,
    websocket_handler,
)


async def frontend_fallback(request: web.Request) -> web.StreamResponse:
    if request.method in ("GET", "HEAD"):
        raise web.HTTPNotFound()
    raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"])


def create_app(models: Models, dirs: DataDirs, faults: Faults, options: ServerOptions | None = None) -> web.Application:
    """The simulator's aiohttp application; the worker thread starts with the app."""
    options = options or ServerOptions()
    middleware = cors_middleware(options.cors_origin) if options.cors_origin else origin_only_middleware
    app = web.Application(client_max_size=MAX_UPLOAD_SIZE, middlewares=[middleware])
    srv = SimServer(models, dirs, faults, options)
    app[APP_STATE] = srv
    # ComfyUI serves every route twice: under /api first, then plain.
    routes = [("GET", "/ws", websocket_handler), *HTTP_ROUTES]
    if options.cleanup_route:
        routes.append(("POST", "/comfyfleet/cleanup", post_cleanup))
    for method, path, handler in routes:
        app.router.add_route(method, "/api" + path, handler)
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
    # Last, as ComfyUI's static route for its frontend at "/": an unknown path answers 404 to GET and HEAD and 405
    # (Allow: GET,HEAD) to any other method, so a POST to a route the server lacks is a 405, not a 404.
    app.router.add_route("*", "/{tail:.*}", frontend_fallback)
    app.on_startup.append(srv.start)
    app.on_shutdown.append(srv.stop)
    return app
