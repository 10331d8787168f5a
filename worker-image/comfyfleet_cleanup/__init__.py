"""comfyfleet's cleanup route for the worker image: ComfyUI has no HTTP route that deletes files.

`POST /comfyfleet/cleanup {"inputs": "comfyfleet-<job id>", "outputs": [{"filename", "subfolder", "type"}]}`
deletes one job's upload folder and its output files once the dispatcher has stored them, so a long-lived pod's
disk does not fill up. Only a `comfyfleet-<uuid>` folder directly under input/ and files inside output/ can be
named; anything else is refused with 400. Pools running another image simply answer 404 and keep their files.
"""

from __future__ import annotations

import os
import re
import shutil

import folder_paths  # type: ignore[import-not-found]  # ComfyUI's own module, present inside ComfyUI only
from aiohttp import web
from server import PromptServer  # type: ignore[import-not-found]

NODE_CLASS_MAPPINGS: dict[str, object] = {}
JOB_FOLDER = re.compile(r"^comfyfleet-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _inside(root: str, *parts: str) -> str | None:
    path = os.path.abspath(os.path.join(root, *parts))
    return path if os.path.commonpath([path, os.path.abspath(root)]) == os.path.abspath(root) and path != root else None


@PromptServer.instance.routes.post("/comfyfleet/cleanup")
async def cleanup(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except ValueError:
        return web.json_response({"error": "body must be JSON"}, status=400)
    deleted: list[str] = []
    folder = body.get("inputs")
    if folder is not None:
        if not isinstance(folder, str) or not JOB_FOLDER.match(folder):
            return web.json_response({"error": "inputs must be a comfyfleet-<job id> folder"}, status=400)
        path = _inside(folder_paths.get_input_directory(), folder)
        if path and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
            deleted.append(f"input/{folder}")
    for ref in body.get("outputs") or []:
        if not isinstance(ref, dict) or ref.get("type") != "output" or not isinstance(ref.get("filename"), str):
            return web.json_response({"error": "outputs must be [{filename, subfolder, type: output}]"}, status=400)
        path = _inside(folder_paths.get_output_directory(), str(ref.get("subfolder") or ""), ref["filename"])
        if path is None:
            return web.json_response({"error": f"{ref['filename']!r} is not inside output/"}, status=400)
        if os.path.isfile(path):
            os.remove(path)
            deleted.append(os.path.relpath(path, folder_paths.get_output_directory()))
            parent = os.path.dirname(path)
            if JOB_FOLDER.match(os.path.basename(parent)) and not os.listdir(parent):
                os.rmdir(parent)  # the job's own output folder, now empty
    return web.json_response({"deleted": deleted})
