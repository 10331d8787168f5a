"""`comfyfleet api --workers N`: N uvicorn worker processes serve the same API and stop with the parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support.procs import REPO_ROOT, alive, descendants, free_port, wait_for


def _workers(parent: int) -> list[int]:
    """uvicorn's worker processes below parent (multiprocessing spawn children, not its resource tracker)."""
    found = []
    for pid in descendants(parent):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            found.append(pid)
    return found


def test_api_with_two_workers_serves_and_stops(tmp_path, redis_server):
    port = free_port()
    env = {**os.environ, "COMFYFLEET_REDIS_URL": redis_server.url, "COMFYFLEET_REDIS_PREFIX": f"apiw{port}",
           "COMFYFLEET_AUTH_MODE": "none", "COMFYFLEET_COMFYUI_URLS": "", "COMFYFLEET_DATA_DIR": str(tmp_path)}
    api = subprocess.Popen([sys.executable, "-m", "comfyfleet", "api", "--port", str(port), "--workers", "2"],
                           cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: len(_workers(api.pid)) == 2 and httpx.get(f"{url}/health", timeout=2).status_code == 200,
                 timeout=60, what="two API workers")
        spawned = descendants(api.pid)
        with httpx.Client(base_url=url, timeout=10) as client:
            ids = set()
            for _ in range(6):  # new connections: the kernel spreads them over the workers' shared socket
                r = httpx.post(f"{url}/api/comfyui/generate", json={"template": "weightless"}, timeout=10)
                assert r.status_code == 202, r.text
                ids.add(r.json()["jobId"])
            assert len(ids) == 6
            job = client.get(f"/api/comfyui/job/{ids.pop()}").json()
            assert job["state"] == "queued"
            bad = client.post("/api/comfyui/generate", json={"template": "weightless", "priority": 11})
            assert bad.status_code == 422 and "priority" in bad.text
    finally:
        os.kill(api.pid, signal.SIGTERM)
        output = api.communicate(timeout=60)[0].decode()
    assert api.returncode == 0, output
    wait_for(lambda: not any(alive(p) for p in spawned), timeout=15, what="no stray API workers")


def test_api_workers_flag_is_validated(tmp_path, redis_server):
    env = {**os.environ, "COMFYFLEET_REDIS_URL": redis_server.url, "COMFYFLEET_AUTH_MODE": "none"}
    out = subprocess.run([sys.executable, "-m", "comfyfleet", "api", "--port", str(free_port()), "--workers", "0"],
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "api_workers" in out.stderr
