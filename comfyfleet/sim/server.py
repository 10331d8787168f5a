"""ComfyUI's PromptServer: the queue, the worker thread, websocket routing and the request middleware.

Execution events go only to the socket registered under the prompt's client_id; `status` and
`execution_interrupted` go to every socket; a later socket with the same clientId replaces the earlier.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import ipaddress
import json
import logging
import os
import socket
import struct
import threading
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from aiohttp import WSMsgType, web

from comfyfleet.sim.catalog import Models
from comfyfleet.sim.executor import Faults, InterruptFlag, PodCrashed, PromptExecutor, prompt_worker
from comfyfleet.sim.paths import DataDirs
from comfyfleet.sim.prompt_queue import PromptQueue

log = logging.getLogger("comfyfleet.sim")

# ComfyUI's default --max-upload-size is 100 MB; /features and feature_flags report it in bytes.
MAX_UPLOAD_SIZE = 100 * 1024 * 1024
SERVER_FEATURES = {"supports_preview_metadata": True, "max_upload_size": MAX_UPLOAD_SIZE}
APP_STATE: web.AppKey[SimServer] = web.AppKey("sim_server")


@dataclass(frozen=True)
class ServerOptions:
    """What the HTTP side needs to know beyond models, folders and fault knobs."""

    cors_origin: str | None = None
    cpu: bool = False
    argv: tuple[str, ...] = ("main.py",)
    # The crash knob's effect: exit the whole process (one pod per process, like a real pod), or, when
    # one process hosts many pods, call this on the event loop to drop only this pod's sockets.
    on_crash: Callable[[], object] | None = None
    # Serve the worker image's `comfyfleet_cleanup` custom node route (POST /comfyfleet/cleanup), as a pod of
    # comfyfleet's worker image does; off, the simulator is a plain ComfyUI that answers 404 there.
    cleanup_route: bool = True


class SimServer:
    """Owns the queue, the worker thread and the sockets; the Hub the executor sends through."""

    def __init__(self, models: Models, dirs: DataDirs, faults: Faults, options: ServerOptions):
        self.models, self.dirs, self.faults, self.options = models, dirs, faults, options
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.feature_flags: dict[str, dict[str, Any]] = {}
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.last_prompt_id: str | None = None
        self.number = 0
        self.interrupt = InterruptFlag()
        self.queue = PromptQueue(self.queue_updated)
        self.executor = PromptExecutor(self, models, dirs, faults, self.interrupt)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.messages: asyncio.Queue[tuple[str | int, Any, str | None]] | None = None
        self._outbox: collections.deque[tuple[str | int, Any, str | None]] = collections.deque()
        self._outbox_lock = threading.Lock()
        self._drain_scheduled = False

    # --- Hub, callable from any thread -------------------------------------------------------------
    def send(self, event: str | int, data: Any, sid: str | None = None) -> None:
        """Queue a frame: a JSON event by name, or a binary event by number with its payload bytes."""
        assert self.loop is not None and self.messages is not None
        # Frames wait in a plain deque and one loop callback moves a burst of them: a wake-up of the loop
        # (a syscall, so a GIL hand-off) per burst, not per frame, which hundreds of pods in one process
        # would otherwise pay thousands of times a second.
        self._outbox.append((event, data, sid))
        with self._outbox_lock:
            if self._drain_scheduled:
                return
            self._drain_scheduled = True
        self.loop.call_soon_threadsafe(self._drain_outbox)

    def _drain_outbox(self) -> None:
        assert self.messages is not None
        with self._outbox_lock:
            self._drain_scheduled = False
        while self._outbox:
            self.messages.put_nowait(self._outbox.popleft())

    def supports_preview_metadata(self, sid: str) -> bool:
        return bool(self.feature_flags.get(sid, {}).get("supports_preview_metadata"))

    def flush(self, timeout: float) -> None:
        """Wait until queued frames are written (from the worker thread)."""
        assert self.loop is not None and self.messages is not None
        future = asyncio.run_coroutine_threadsafe(self.messages.join(), self.loop)
        try:
            future.result(timeout)
        except TimeoutError:
            log.warning("websocket frames still queued after %.1fs", timeout)

    def crash(self) -> NoReturn:
        """From the worker thread: die like a killed pod, the process or (in a fleet) this pod only."""
        if self.options.on_crash is None:
            logging.shutdown()
            os._exit(137)
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self.options.on_crash)
        raise PodCrashed()

    def queue_updated(self) -> None:
        self.send("status", {"status": self.queue_info()})

    def queue_info(self) -> dict[str, Any]:
        return {"exec_info": {"queue_remaining": self.queue.remaining()}}

    # --- lifecycle ---------------------------------------------------------------------------------
    async def start(self, app: web.Application) -> None:
        self.loop = asyncio.get_running_loop()
        self.messages = asyncio.Queue()
        app[PUBLISHER] = asyncio.create_task(self._publish_loop())
        # The worker runs in a copy of this context, so it logs as the pod that started it (fleet mode).
        context = contextvars.copy_context()
        threading.Thread(
            target=context.run, args=(prompt_worker, self.queue, self.executor, self), name="prompt_worker", daemon=True
        ).start()

    async def stop(self, app: web.Application) -> None:
        for ws in list(self.sockets.values()):
            await ws.close(code=1001, message=b"Server shutdown")
        app[PUBLISHER].cancel()

    async def _publish_loop(self) -> None:
        assert self.messages is not None
        while True:
            event, data, sid = await self.messages.get()
            try:
                if sid is None:
                    targets = list(self.sockets.values())
                else:
                    targets = [self.sockets[sid]] if sid in self.sockets else []
                for ws in targets:
                    try:
                        if isinstance(event, int):
                            await ws.send_bytes(struct.pack(">I", event) + data)
                        else:
                            await ws.send_json({"type": event, "data": data})
                    except Exception as ex:  # noqa: BLE001 - one broken socket must not stop the others' frames
                        log.warning("send error: %s", ex)
            finally:
                self.messages.task_done()


PUBLISHER: web.AppKey[asyncio.Task[None]] = web.AppKey("publisher")


def sim_server(request: web.Request) -> SimServer:
    """The SimServer behind a request."""
    return request.app[APP_STATE]


# --- websocket -------------------------------------------------------------------------------------
async def websocket_handler(request: web.Request) -> web.WebSocketResponse:
    srv = sim_server(request)
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    sid = request.rel_url.query.get("clientId", "")
    if sid:
        srv.sockets.pop(sid, None)  # a second socket with the same id silently takes over
    else:
        sid = uuid.uuid4().hex
    srv.sockets[sid] = ws
    srv.feature_flags[sid] = {}
    try:
        await ws.send_json({"type": "status", "data": {"status": srv.queue_info(), "sid": sid}})
        if srv.client_id == sid and srv.last_node_id is not None:
            await ws.send_json({"type": "executing", "data": {"node": srv.last_node_id}})
        first = True
        async for msg in ws:
            if msg.type == WSMsgType.ERROR:
                log.warning("ws connection closed with exception %s", ws.exception())
            elif msg.type == WSMsgType.TEXT:
                try:
                    data = json.loads(msg.data)
                    if first and isinstance(data, dict) and data.get("type") == "feature_flags":
                        srv.feature_flags[sid] = data.get("data", {})
                        await ws.send_json({"type": "feature_flags", "data": SERVER_FEATURES})
                    first = False
                except json.JSONDecodeError:
                    log.warning("Invalid JSON received from client %s: %s", sid, msg.data)
    finally:
        # ComfyUI pops by id, so closing a replaced socket also unregisters its replacement.
        srv.sockets.pop(sid, None)
        srv.feature_flags.pop(sid, None)
    return ws


# --- middleware ------------------------------------------------------------------------------------
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    loopback = False
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            for *_, sockaddr in socket.getaddrinfo(host, None, family, socket.SOCK_STREAM):
                if not ipaddress.ip_address(sockaddr[0]).is_loopback:
                    return loopback
                loopback = True
        except socket.gaierror:
            pass
    return loopback


@web.middleware
async def origin_only_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """403 when a loopback Host meets a different Origin (ComfyUI's CSRF guard); OPTIONS always 200."""
    if "Host" in request.headers and "Origin" in request.headers:
        host_domain = request.headers["Host"].lower()
        origin_domain = urllib.parse.urlparse(request.headers["Origin"]).netloc.lower()
        hostname = urllib.parse.urlsplit("//" + host_domain).hostname
        if _is_loopback(hostname) and host_domain and origin_domain and host_domain != origin_domain:
            log.warning("WARNING: request with non matching host and origin %s != %s, returning 403",
                        host_domain, origin_domain)  # fmt: skip
            return web.Response(status=403)
    if request.method == "OPTIONS":
        return web.Response()
    return await handler(request)


def cors_middleware(origin: str) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = web.Response() if request.method == "OPTIONS" else await handler(request)
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Methods"] = "POST, GET, DELETE, PUT, OPTIONS, PATCH"
        response.headers["Access-Control-Allow-Headers"] = "Content-Type, Authorization"
        response.headers["Access-Control-Allow-Credentials"] = "true"
        return response

    return middleware
