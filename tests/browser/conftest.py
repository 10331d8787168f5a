"""Browser-side tests: the TypeScript client (vitest), the dashboard and a foreign page (headless Chromium).

They run the project's Node.js code against a real stack (redis-server, simulators, API, RQ workers)
started here, like the integration tier; Node.js 20 and clients/typescript/node_modules (npm ci) are
needed, and Debian's chromium for the Chromium tests (.ci/run installs both).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import redis_server, sim_factory, stack_factory  # noqa: F401 - shared fixtures
from tests.support.procs import REPO_ROOT

TS_DIR = REPO_ROOT / "clients" / "typescript"
ARTIFACTS = REPO_ROOT / "tests" / "browser" / "artifacts"


@pytest.fixture(scope="session")
def ts_client_dir() -> Path:
    """clients/typescript with its node_modules (npm ci from the committed lockfile if missing) and dist/."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("Node.js 20 and npm are required for tests/browser (see .ci/run)")
    lock = TS_DIR / "package-lock.json"
    stamp = TS_DIR / "node_modules" / ".package-lock.json"
    if not stamp.exists() or stamp.stat().st_mtime < lock.stat().st_mtime:
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=TS_DIR, check=True)
    subprocess.run(["npx", "--no-install", "tsc", "-p", "tsconfig.json"], cwd=TS_DIR, check=True)
    return TS_DIR


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
