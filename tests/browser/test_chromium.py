"""Headless Chromium (Debian's chromium, driven by playwright-core) against a real stack: the dashboard and a
page on another origin using the TypeScript client. Screenshots land in tests/browser/artifacts/."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.procs import free_port
from tests.support.stack import ADMIN, ALICE, BOB

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def test_dashboard_and_foreign_origin_page_in_chromium(ts_client_dir: Path, artifacts: Path, sim_factory,
                                                       stack_factory):
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.fail("Debian's chromium is required (apt-get install -y chromium; .ci/run does it)")
    sims = [sim_factory(step_seconds=0.1), sim_factory(step_seconds=0.1)]
    allowed, denied = free_port(), free_port()
    stack = stack_factory([s.url for s in sims], workers=2,
                          env={"COMFYFLEET_CORS_ORIGINS": f"http://localhost:{allowed}"})
    stack.wait_workers_ready(2)
    env = {**os.environ, "COMFYFLEET_TEST_API": stack.url,
           "COMFYFLEET_TEST_TOKENS": json.dumps({"alice": ALICE, "bob": BOB, "admin": ADMIN}),
           "TS_CLIENT_DIR": str(ts_client_dir), "ARTIFACTS": str(artifacts), "FOREIGN_PORT": str(allowed),
           "DENIED_PORT": str(denied), "EXPECTED_PODS": str(len(sims)), "CHROMIUM": CHROMIUM}
    run = subprocess.run(["node", "--test", "--test-reporter=spec", str(Path(__file__).with_name("e2e.test.mjs"))],
                         env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, f"{run.stdout[-8000:]}\n{run.stderr[-3000:]}"
    for shot in ("dashboard-pods", "dashboard-progress", "dashboard-thumbnail", "dashboard-usage", "dashboard-admin",
                 "dashboard-user", "foreign-origin"):
        assert (artifacts / f"{shot}.png").stat().st_size > 1000, shot
