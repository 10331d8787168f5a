"""ComfyUI's HTTP endpoints: prompts, queue, history, files and server information.

Endpoints that return nothing answer 200 with an empty body and no content type; JSON answers are
`application/json; charset=utf-8`; a body that is not JSON raises, so aiohttp answers its own
text/plain 500, exactly like the real server.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import os
import re
import shutil
import sys
import uuid
from collections.abc import Callable
from io import BytesIO
from typing import Any

from aiohttp import web
from PIL import Image

from comfyfleet.sim.catalog import MODEL_FOLDERS, NODE_CLASSES, node_info, object_info
from comfyfleet.sim.paths import UploadRejected, annotated_filepath, upload_target
from comfyfleet.sim.server import SERVER_FEATURES, Handler, sim_server
from comfyfleet.sim.validate import validate_prompt

log = logging.getLogger("comfyfleet.sim")

COMFYUI_VERSION = "0.3.64"
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")


# --- prompts and queue -----------------------------------------------------------------------------
async def post_prompt(request: web.Request) -> web.Response:
    srv = sim_server(request)
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
    return web.json_response(sim_server(request).queue_info())


async def get_queue(request: web.Request) -> web.Response:
    running, pending = sim_server(request).queue.current()
    return web.json_response({"queue_running": running, "queue_pending": pending})


async def _clear_or_delete(
    request: web.Request, clear: Callable[[], object], delete: Callable[[str], object]
) -> web.Response:
    """POST /queue and POST /history share ComfyUI's body: {"clear": true} and/or {"delete": [ids]}."""
    json_data = await request.json()
    if "clear" in json_data and json_data["clear"]:
        clear()
    if "delete" in json_data:
        for prompt_id in json_data["delete"]:
            delete(prompt_id)
    return web.Response(status=200)


async def post_queue(request: web.Request) -> web.Response:
    queue = sim_server(request).queue
    return await _clear_or_delete(request, queue.wipe_queue, queue.delete_pending)


async def post_interrupt(request: web.Request) -> web.Response:
    srv = sim_server(request)
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
    srv = sim_server(request)
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
    return web.json_response(sim_server(request).queue.get_history(max_items=max_items, offset=offset))


async def get_history_item(request: web.Request) -> web.Response:
    return web.json_response(sim_server(request).queue.get_history(prompt_id=request.match_info["prompt_id"]))


async def post_history(request: web.Request) -> web.Response:
    queue = sim_server(request).queue
    return await _clear_or_delete(request, queue.wipe_history, queue.delete_history)


# --- files -----------------------------------------------------------------------------------------
async def upload_image(request: web.Request) -> web.Response:
    srv = sim_server(request)
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
    srv = sim_server(request)
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
    return web.json_response(object_info(sim_server(request).models))


async def get_object_info_node(request: web.Request) -> web.Response:
    name = request.match_info["node_class"]
    if name not in NODE_CLASSES:
        return web.json_response({})
    return web.json_response({name: node_info(name, sim_server(request).models)})


async def get_models(request: web.Request) -> web.Response:
    return web.json_response(MODEL_FOLDERS)


async def get_models_folder(request: web.Request) -> web.Response:
    folder = request.match_info["folder"]
    if folder not in MODEL_FOLDERS:
        return web.Response(status=404)
    return web.json_response(sim_server(request).models.folder(folder))


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
    srv = sim_server(request)
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


_JOB_FOLDER = re.compile(r"^comfyfleet-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


async def post_cleanup(request: web.Request) -> web.Response:
    """The worker image's comfyfleet_cleanup custom node (worker-image/comfyfleet_cleanup), same rules: only a
    `comfyfleet-<uuid>` folder under input/ and files inside output/ may be deleted."""
    dirs = sim_server(request).dirs
    try:
        body = await request.json()
    except ValueError:
        return web.json_response({"error": "body must be JSON"}, status=400)
    deleted: list[str] = []
    folder = body.get("inputs")
    if folder is not None:
        if not isinstance(folder, str) or not _JOB_FOLDER.match(folder):
            return web.json_response({"error": "inputs must be a comfyfleet-<job id> folder"}, status=400)
        path = dirs.input / folder
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            deleted.append(f"input/{folder}")
    out_root = dirs.output.resolve()
    for ref in body.get("outputs") or []:
        if not isinstance(ref, dict) or ref.get("type") != "output" or not isinstance(ref.get("filename"), str):
            return web.json_response({"error": "outputs must be [{filename, subfolder, type: output}]"}, status=400)
        path = (out_root / str(ref.get("subfolder") or "") / ref["filename"]).resolve()
        if out_root not in path.parents:
            return web.json_response({"error": f"{ref['filename']!r} is not inside output/"}, status=400)
        if path.is_file():
            path.unlink()
            deleted.append(str(path.relative_to(out_root)))
            if _JOB_FOLDER.match(path.parent.name) and not any(path.parent.iterdir()):
                path.parent.rmdir()  # the job's own output folder, now empty
    return web.json_response({"deleted": deleted})


HTTP_ROUTES: list[tuple[str, str, Handler]] = [
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
