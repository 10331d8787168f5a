"""The CLI a user runs: `comfyfleet up` brings everything up and down cleanly; `submit --wait` prints PNGs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support.procs import REPO_ROOT, alive, descendants, free_port, wait_for


def test_up_serves_submit_and_stops_cleanly(tmp_path, redis_server):
    port = free_port()
    env = {**os.environ, "COMFYFLEET_REDIS_URL": redis_server.url, "COMFYFLEET_REDIS_PREFIX": "cli" + str(port)}
    up = subprocess.Popen(
        [sys.executable, "-m", "comfyfleet", "up", "--port", str(port), "--data-dir", str(tmp_path / "data"),
         "--sims", "2", "--dispatchers", "1"],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    api = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{api}/health/detailed", timeout=2).json()["workers"]["ready"] >= 2,
                 timeout=60, what="comfyfleet up")
        spawned = descendants(up.pid)
        assert len(spawned) >= 3, "the simulator process (2 pods), the API and the dispatcher"
        out = subprocess.run(
            [sys.executable, "-m", "comfyfleet", "submit", "examples/txt2img.json", "--param", "prompt=a lighthouse",
             "--param", "seed=3", "--param", "steps=3", "--api", api, "--wait", "--quiet", "--out",
             str(tmp_path / "out")],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        )
        assert out.returncode == 0, out.stderr
        [path] = out.stdout.split()
        assert Path(path).read_bytes().startswith(b"\x89PNG")

        bad = subprocess.run([sys.executable, "-m", "comfyfleet", "submit", "--template", "txt2img", "--param",
                              "steps=0", "--api", api], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
        assert bad.returncode == 1 and "params.steps" in bad.stderr
    finally:
        os.kill(up.pid, signal.SIGINT)
        output = up.communicate(timeout=60)[0].decode()
    assert up.returncode == 0, output
    assert "comfyfleet stopped." in output
    wait_for(lambda: not any(alive(p) for p in spawned), timeout=15, what="no stray processes")
