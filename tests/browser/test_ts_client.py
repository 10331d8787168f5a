"""The TypeScript client and the React status widget, run by vitest against a real API; type drift check."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx

from comfyfleet.api.openapi import canonical
from tests.support.stack import ADMIN, ALICE, BOB


def test_vitest_suite_against_a_real_stack(ts_client_dir: Path, sim_factory, stack_factory):
    sim = sim_factory(step_seconds=0.05)
    # jsdom pages have the origin http://localhost:3000; the API lets it open WebSockets (cors_origins).
    # Streams last 2 s, so the client's resume after the server ends a stream is exercised on every long job.
    stack = stack_factory([sim.url], workers=2, env={"COMFYFLEET_CORS_ORIGINS": "http://localhost:3000",
                                                     "COMFYFLEET_MAX_STREAM_SECONDS": "2"})
    stack.wait_workers_ready(1)
    env = {**os.environ, "COMFYFLEET_TEST_API": stack.url,
           "COMFYFLEET_TEST_TOKENS": json.dumps({"alice": ALICE, "bob": BOB, "admin": ADMIN}),
           "CI": "true", "NO_COLOR": "1"}
    run = subprocess.run(["npx", "--no-install", "vitest", "run", "--reporter=verbose"], cwd=ts_client_dir,
                         env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, f"{run.stdout[-8000:]}\n{run.stderr[-3000:]}"
    assert " passed" in run.stdout and " failed" not in run.stdout


def test_checked_in_types_match_the_live_schema(ts_client_dir: Path, sim_factory, stack_factory, tmp_path):
    """clients/typescript/openapi.json and src/schema.d.ts are what the running API serves (scripts/gen-ts-types)."""
    stack = stack_factory([], workers=0)
    live = httpx.get(stack.url + "/openapi.json").json()
    checked_in = (ts_client_dir / "openapi.json").read_text()
    assert canonical(live) == checked_in, "the API schema changed: run scripts/gen-ts-types and commit the result"
    (tmp_path / "openapi.json").write_text(canonical(live))
    subprocess.run(["npx", "--no-install", "openapi-typescript", str(tmp_path / "openapi.json"), "-o",
                    str(tmp_path / "schema.d.ts")], cwd=ts_client_dir, check=True, capture_output=True)
    assert (tmp_path / "schema.d.ts").read_text() == (ts_client_dir / "src" / "schema.d.ts").read_text(), \
        "src/schema.d.ts is stale: run scripts/gen-ts-types and commit the result"
