"""The worker image's cleanup route, loaded as ComfyUI loads a custom node, with ComfyUI's two modules it uses
(`folder_paths`, `server.PromptServer`) standing in: ComfyUI itself is not installed in the test environment."""

from __future__ import annotations

import importlib.util
import sys
import types
import uuid
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

NODE = Path(__file__).resolve().parents[3] / "worker-image" / "comfyfleet_cleanup" / "__init__.py"


@pytest.fixture
async def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    (tmp_path / "input").mkdir()
    (tmp_path / "output").mkdir()
    routes = web.RouteTableDef()
    folder_paths = types.SimpleNamespace(get_input_directory=lambda: str(tmp_path / "input"),
                                         get_output_directory=lambda: str(tmp_path / "output"))
    server = types.SimpleNamespace(PromptServer=types.SimpleNamespace(instance=types.SimpleNamespace(routes=routes)))
    monkeypatch.setitem(sys.modules, "folder_paths", folder_paths)
    monkeypatch.setitem(sys.modules, "server", server)
    spec = importlib.util.spec_from_file_location("comfyfleet_cleanup", NODE)
    assert spec and spec.loader
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    app = web.Application()
    app.add_routes(routes)
    async with TestClient(TestServer(app)) as c:
        yield c, tmp_path


async def test_deletes_a_jobs_upload_folder_and_outputs(client) -> None:  # noqa: ANN001
    c, root = client
    folder = f"comfyfleet-{uuid.uuid4()}"
    (root / "input" / folder).mkdir()
    (root / "input" / folder / "a.png").write_bytes(b"x")
    (root / "output" / "comfyfleet_00001_.png").write_bytes(b"x")
    (root / "output" / "keep.png").write_bytes(b"x")
    r = await c.post("/comfyfleet/cleanup", json={"inputs": folder, "outputs": [
        {"filename": "comfyfleet_00001_.png", "subfolder": "", "type": "output"}]})
    assert r.status == 200
    assert sorted((await r.json())["deleted"]) == ["comfyfleet_00001_.png", f"input/{folder}"]
    assert not (root / "input" / folder).exists() and not (root / "output" / "comfyfleet_00001_.png").exists()
    assert (root / "output" / "keep.png").exists()


@pytest.mark.parametrize("body", [
    {"inputs": "models"},
    {"inputs": "../output"},
    {"outputs": [{"filename": "../input/x.png", "subfolder": "", "type": "output"}]},
    {"outputs": [{"filename": "x.png", "subfolder": "../../etc", "type": "output"}]},
    {"outputs": [{"filename": "x.png", "subfolder": "", "type": "input"}]},
])
async def test_refuses_anything_but_job_folders_and_output_files(client, body) -> None:  # noqa: ANN001
    c, root = client
    (root / "input" / "x.png").write_bytes(b"x")
    r = await c.post("/comfyfleet/cleanup", json=body)
    assert r.status == 400
    assert (root / "input" / "x.png").exists()
