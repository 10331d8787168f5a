"""HTTP routes and websocket routing, shaped like ComfyUI's server.py (PromptServer).

Every route is also served under /api. Endpoints that return nothing answer 200 with an empty body and
no content type; JSON answers are `application/json; charset=utf-8`; a body that is not JSON raises, so
aiohttp answers its own text/plain 500, exactly like the real server.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import mimetypes
import os
import socket
import sys
import threading
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from aiohttp import WSMsgType, web
from PIL import Image

from comfyfleet.sim.catalog import MODEL_FOLDERS, NODE_CLASSES, Models, node_info, object_info
from comfyfleet.sim.executor import Faults, InterruptFlag, PromptExecutor, prompt_worker
from comfyfleet.sim.paths import DataDirs, UploadRejected, annotated_filepath, upload_target
from comfyfleet.sim.prompt_queue import PromptQueue
from comfyfleet.sim.validate import validate_prompt

log = logging.getLogger("comfyfleet.sim")

COMFYUI_VERSION = "0.3.64"
# ComfyUI's default --max-upload-size is 100 MB; /features and feature_flags report it in bytes.
MAX_UPLOAD_SIZE = 100 * 1024 * 1024
SERVER_FEATURES = {"supports_preview_metadata": True, "max_upload_size": MAX_UPLOAD_SIZE}
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")
APP_STATE: web.AppKey[SimServer] = web.AppKey("sim_server")


@dataclass(frozen=True)
class ServerOptions:
    """What the HTTP side needs to know beyond models, folders and fault knobs."""

    cors_origin: str | None = None
    cpu: bool = False
    argv: tuple[str, ...] = ("main.py",)


class SimServer:
    """Owns the queue, the worker thread and the sockets; the Hub the executor sends through."""

    def __init__(self, models: Models, dirs: DataDirs, faults: Faults, options: ServerOptions):
        self.models, self.dirs, self.faults, self.options = models, dirs, faults, options
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.last_prompt_id: str | None = None
        self.number = 0
        self.interrupt = InterruptFlag()
        self.queue = PromptQueue(self.queue_updated)
        self.executor = PromptExecutor(self, models, dirs, faults, self.interrupt)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.messages: asyncio.Queue[tuple[str, dict[str, Any], str | None]] | None = None

    # --- Hub, callable from any thread -------------------------------------------------------------
    def send(self, event: str, data: dict[str, Any], sid: str | None = None) -> None:
        assert self.loop is not None and self.messages is not None
        self.loop.call_soon_threadsafe(self.messages.put_nowait, (event, data, sid))

    def flush(self, timeout: float) -> None:
        """Wait until queued frames are written (from the worker thread)."""
        assert self.loop is not None and self.messages is not None
        future = asyncio.run_coroutine_threadsafe(self.messages.join(), self.loop)
        try:
            future.result(timeout)
        except TimeoutError:
            log.warning("websocket frames still queued after %.1fs", timeout)

    def queue_updated(self) -> None:
        self.send("status", {"status": self.queue_info()})

    def queue_info(self) -> dict[str, Any]:
        return {"exec_info": {"queue_remaining": self.queue.remaining()}}

    # --- lifecycle ---------------------------------------------------------------------------------
    async def start(self, app: web.Application) -> None:
        self.loop = asyncio.get_running_loop()
        self.messages = asyncio.Queue()
        app[PUBLISHER] = asyncio.create_task(self._publish_loop())
        threading.Thread(
            target=prompt_worker, args=(self.queue, self.executor, self), name="prompt_worker", daemon=True
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
                message = {"type": event, "data": data}
                if sid is None:
                    targets = list(self.sockets.values())
                else:
                    targets = [self.sockets[sid]] if sid in self.sockets else []
                for ws in targets:
                    try:
                        await ws.send_json(message)
                    except Exception as ex:  # noqa: BLE001 - one broken socket must not stop the others' frames
                        log.warning("send error: %s", ex)
            finally:
                self.messages.task_done()


PUBLISHER: web.AppKey[asyncio.Task[None]] = web.AppKey("publisher")


def _server(request: web.Request) -> SimServer:
    return request.app[APP_STATE]


# --- websocket -------------------------------------------------------------------------------------
async def websocket_handler(request: web.Request) -> web.WebSocketResponse:
    srv = _server(request)
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    sid = request.rel_url.query.get("clientId", "")
    if sid:
        srv.sockets.pop(sid, None)  # a second socket with the same id silently takes over
    else:
        sid = uuid.uuid4().hex
    srv.sockets[sid] = ws
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
                        await ws.send_json({"type": "feature_flags", "data": SERVER_FEATURES})
                    first = False
                except json.JSONDecodeError:
                    log.warning("Invalid JSON received from client %s: %s", sid, msg.data)
    finally:
        # ComfyUI pops by id, so closing a replaced socket also unregisters its replacement.
        srv.sockets.pop(sid, None)
    return ws


# --- prompts and queue -----------------------------------------------------------------------------
async def post_prompt(request: web.Request) -> web.Response:
    srv = _server(request)
    log.info("got prompt")
    json_data = await request.json()
    if "number" in json_data:
        number: Any = float(json_data["number"])
    else:
        number = srv.number
        if "front" in json_data and json_data["front"]:
            number = -number
        srv.number += 1  # used up even when validation then rejects the prompt
    if "prompt" not in json_data:
        error = {"type": "no_prompt", "message": "No prompt provided", "details": "No prompt provided",
                 "extra_info": {}}  # fmt: skip
        return web.json_response({"error": error, "node_errors": {}}, status=400)
    prompt = json_data["prompt"]
    prompt_id = str(json_data.get("prompt_id", uuid.uuid4()))
    result = validate_prompt(prompt, srv.models, srv.dirs, json_data.get("partial_execution_targets"))
    extra_data = json_data.get("extra_data", {})
    if "client_id" in json_data:
        extra_data["client_id"] = json_data["client_id"]
    if not result.ok:
        log.warning("invalid prompt: %s", result.error)
        return web.json_response({"error": result.error, "node_errors": result.node_errors}, status=400)
    sensitive = {k: extra_data.pop(k) for k in SENSITIVE_EXTRA_DATA_KEYS if k in extra_data}
    srv.queue.put((number, prompt_id, prompt, extra_data, result.outputs, sensitive))
    return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": result.node_errors})


async def get_prompt(request: web.Request) -> web.Response:
    return web.json_response(_server(request).queue_info())


async def get_queue(request: web.Request) -> web.Response:
    running, pending = _server(request).queue.current()
    return web.json_response({"queue_running": running, "queue_pending": pending})


async def post_queue(request: web.Request) -> web.Response:
    srv = _server(request)
    json_data = await request.json()
    if "clear" in json_data and json_data["clear"]:
        srv.queue.wipe_queue()
    if "delete" in json_data:
        for prompt_id in json_data["delete"]:
            srv.queue.delete_pending(prompt_id)
    return web.Response(status=200)


async def post_interrupt(request: web.Request) -> web.Response:
    srv = _server(request)
    try:
        json_data = await request.json()
    except json.JSONDecodeError:
        json_data = {}
    prompt_id = json_data.get("prompt_id")
    if prompt_id:
        if prompt_id in srv.queue.running_ids():
            log.info("Interrupting prompt %s", prompt_id)
            srv.interrupt.set()
        else:
            log.info("Prompt %s is not currently running, skipping interrupt", prompt_id)
    else:
        log.info("Global interrupt (no prompt_id specified)")
        srv.interrupt.set()
    return web.Response(status=200)


async def post_free(request: web.Request) -> web.Response:
    srv = _server(request)
    json_data = await request.json()
    if json_data.get("unload_models", False):
        srv.queue.set_flag("unload_models", True)
    if json_data.get("free_memory", False):
        srv.queue.set_flag("free_memory", True)
    return web.Response(status=200)


async def get_history(request: web.Request) -> web.Response:
    query = request.rel_url.query
    max_items = int(query["max_items"]) if "max_items" in query else None
    offset = int(query["offset"]) if "offset" in query else -1
    return web.json_response(_server(request).queue.get_history(max_items=max_items, offset=offset))


async def get_history_item(request: web.Request) -> web.Response:
    return web.json_response(_server(request).queue.get_history(prompt_id=request.match_info["prompt_id"]))


async def post_history(request: web.Request) -> web.Response:
    srv = _server(request)
    json_data = await request.json()
    if "clear" in json_data and json_data["clear"]:
        srv.queue.wipe_history()
    if "delete" in json_data:
        for prompt_id in json_data["delete"]:
            srv.queue.delete_history(prompt_id)
    return web.Response(status=200)


# --- files -----------------------------------------------------------------------------------------
async def upload_image(request: web.Request) -> web.Response:
    srv = _server(request)
    post = await request.post()
    image = post.get("image")
    kind = post.get("type")
    kind = "input" if kind is None else kind
    base = srv.dirs.by_type(str(kind))
    if base is None:
        # ComfyUI hits an UnboundLocalError here, which aiohttp turns into its plain 500.
        raise RuntimeError(f"cannot access local variable 'type_dir' (upload type {kind!r})")
    if not isinstance(image, web.FileField) or not image.filename:
        return web.Response(status=400)
    data = image.file.read()
    overwrite = post.get("overwrite") in ("true", "1")
    subfolder = str(post.get("subfolder", ""))
    try:
        path, name, duplicate = upload_target(base, subfolder, image.filename, data, overwrite)
    except UploadRejected:
        return web.Response(status=400)
    if not duplicate:
        path.write_bytes(data)
    return web.json_response({"name": name, "subfolder": subfolder, "type": kind})


async def view_image(request: web.Request) -> web.StreamResponse:
    srv = _server(request)
    query = request.rel_url.query
    if "filename" not in query:
        return web.Response(status=404)
    filename, output_dir = annotated_filepath(query["filename"], srv.dirs)
    if not filename or filename[0] == "/" or ".." in filename:
        return web.Response(status=400)
    if output_dir is None:
        output_dir = srv.dirs.by_type(query.get("type", "output"))
    if output_dir is None:
        return web.Response(status=400)
    base = os.path.abspath(output_dir)
    if "subfolder" in query:
        full = os.path.join(base, query["subfolder"])
        if os.path.commonpath((os.path.abspath(full), base)) != base:
            return web.Response(status=403)
        base = full
    filename = os.path.basename(filename)
    file = os.path.join(base, filename)
    if not os.path.isfile(file):
        return web.Response(status=404)
    disposition = {"Content-Disposition": f'filename="{filename}"'}
    if "preview" in query:
        return _preview(file, query, disposition)
    channel = query.get("channel", "rgba")
    if channel in ("rgb", "a"):
        return _channel(file, channel, disposition)
    content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    if content_type in {"text/html", "text/html-sandboxed", "application/xhtml+xml", "text/javascript", "text/css"}:
        content_type = "application/octet-stream"  # forces a download, as ComfyUI does
    return web.FileResponse(file, headers={**disposition, "Content-Type": content_type})


def _preview(file: str, query: Any, headers: dict[str, str]) -> web.Response:
    parts = query["preview"].split(";")
    image_format = parts[0]
    if image_format not in ("webp", "jpeg") or "a" in query.get("channel", ""):
        image_format = "webp"
    quality = int(parts[-1]) if parts[-1].isdigit() else 90
    with Image.open(file) as img:
        buffer = BytesIO()
        img.convert("RGB").save(buffer, format=image_format, quality=quality)
    return web.Response(body=buffer.getvalue(), content_type=f"image/{image_format}", headers=headers)


def _channel(file: str, channel: str, headers: dict[str, str]) -> web.Response:
    with Image.open(file) as img:
        if channel == "rgb":
            out = Image.merge("RGB", img.split()[:3]) if img.mode == "RGBA" else img.convert("RGB")
        else:
            alpha = img.split()[3] if img.mode == "RGBA" else Image.new("L", img.size, 255)
            out = Image.new("RGBA", img.size)
            out.putalpha(alpha)
        buffer = BytesIO()
        out.save(buffer, format="PNG")
    return web.Response(body=buffer.getvalue(), content_type="image/png", headers=headers)


# --- information -----------------------------------------------------------------------------------
async def get_object_info(request: web.Request) -> web.Response:
    return web.json_response(object_info(_server(request).models))


async def get_object_info_node(request: web.Request) -> web.Response:
    name = request.match_info["node_class"]
    if name not in NODE_CLASSES:
        return web.json_response({})
    return web.json_response({name: node_info(name, _server(request).models)})


async def get_models(request: web.Request) -> web.Response:
    return web.json_response(MODEL_FOLDERS)


async def get_models_folder(request: web.Request) -> web.Response:
    folder = request.match_info["folder"]
    if folder not in MODEL_FOLDERS:
        return web.Response(status=404)
    return web.json_response(_server(request).models.folder(folder))


async def get_embeddings(request: web.Request) -> web.Response:
    return web.json_response([])


async def get_extensions(request: web.Request) -> web.Response:
    return web.json_response([])


async def get_features(request: web.Request) -> web.Response:
    return web.json_response(SERVER_FEATURES)


async def get_root(request: web.Request) -> web.Response:
    return web.Response(text="<!doctype html><title>ComfyUI</title><p>comfyfleet ComfyUI simulator</p>",
                        content_type="text/html")  # fmt: skip


def _memory() -> tuple[int, int]:
    total = free = 0
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        total, free = info.get("MemTotal", 0), info.get("MemAvailable", 0)
    except OSError as ex:
        log.warning("cannot read /proc/meminfo: %s", ex)
    return total, free


async def get_system_stats(request: web.Request) -> web.Response:
    srv = _server(request)
    ram_total, ram_free = _memory()
    if srv.options.cpu:
        device = {"name": "cpu", "type": "cpu", "index": None, "vram_total": ram_total, "vram_free": ram_free,
                  "torch_vram_total": ram_total, "torch_vram_free": ram_free}  # fmt: skip
    else:
        # A 24 GB card, the size our GPU pods usually get.
        vram = 24 * 1024**3
        device = {"name": "cuda:0 NVIDIA L4 : cudaMallocAsync", "type": "cuda", "index": 0, "vram_total": vram,
                  "vram_free": vram - 512 * 1024**2, "torch_vram_total": 0, "torch_vram_free": 0}  # fmt: skip
    return web.json_response({
        "system": {
            "os": os.name,
            "ram_total": ram_total,
            "ram_free": ram_free,
            "comfyui_version": COMFYUI_VERSION,
            "required_frontend_version": "1.27.10",
            "installed_templates_version": "0.1.95",
            "required_templates_version": "0.1.95",
            "python_version": sys.version,
            "pytorch_version": "2.8.0+cpu" if srv.options.cpu else "2.8.0+cu128",
            "embedded_python": False,
            "argv": list(srv.options.argv),
        },
        "devices": [device],
    })  # fmt: skip


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


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/ws", websocket_handler),
    ("GET", "/", get_root),
    ("GET", "/embeddings", get_embeddings),
    ("GET", "/models", get_models),
    ("GET", "/models/{folder}", get_models_folder),
    ("GET", "/extensions", get_extensions),
    ("POST", "/upload/image", upload_image),
    ("GET", "/view", view_image),
    ("GET", "/system_stats", get_system_stats),
    ("GET", "/features", get_features),
    ("GET", "/prompt", get_prompt),
    ("GET", "/object_info", get_object_info),
    ("GET", "/object_info/{node_class}", get_object_info_node),
    ("GET", "/history", get_history),
    ("GET", "/history/{prompt_id}", get_history_item),
    ("GET", "/queue", get_queue),
    ("POST", "/prompt", post_prompt),
    ("POST", "/queue", post_queue),
    ("POST", "/interrupt", post_interrupt),
    ("POST", "/free", post_free),
    ("POST", "/history", post_history),
]


def create_app(models: Models, dirs: DataDirs, faults: Faults, options: ServerOptions | None = None) -> web.Application:
    """The simulator's aiohttp application; the worker thread starts with the app."""
    options = options or ServerOptions()
    middleware = cors_middleware(options.cors_origin) if options.cors_origin else origin_only_middleware
    app = web.Application(client_max_size=MAX_UPLOAD_SIZE, middlewares=[middleware])
    srv = SimServer(models, dirs, faults, options)
    app[APP_STATE] = srv
    for method, path, handler in ROUTES:
        app.router.add_route(method, "/api" + path, handler)
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    app.on_startup.append(srv.start)
    app.on_shutdown.append(srv.stop)
    return app
