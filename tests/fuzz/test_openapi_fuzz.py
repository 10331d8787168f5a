"""Fuzz the live API against its own OpenAPI schema (schemathesis), with auth on.

Every operation gets a bounded number of generated requests (valid and invalid), sent over real HTTP to a
real API process on a real Redis, as an admin so admin routes are reached too. Each answer must be no 5xx,
use a status code the schema declares, and match the declared response schema, headers and content type.
Bounded for CI: COMFYFLEET_FUZZ_EXAMPLES examples per operation (default 12) and a time budget.

Runs schemathesis' own CLI (its pytest plugin does not support pytest 9 yet); the report is in the output.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.redis import RedisServer
from tests.support.stack import ADMIN, Stack

FUZZ_EXAMPLES = os.environ.get("COMFYFLEET_FUZZ_EXAMPLES", "12")
FUZZ_MAX_SECONDS = os.environ.get("COMFYFLEET_FUZZ_MAX_SECONDS", "75")
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance," \
         "response_headers_conformance"


def test_api_conforms_to_its_schema(tmp_path: Path) -> None:
    redis_server = RedisServer(tmp_path / "redis")
    # No health monitor: fuzzed admin calls register endpoint URLs that must not be probed.
    stack = Stack(tmp_path / "stack", redis_server.url, [], workers=0, env={
        "COMFYFLEET_RUN_HEALTH_MONITOR": "false", "COMFYFLEET_PROTECT_OPS_ROUTES": "true",
        "COMFYFLEET_MAX_BODY_BYTES": str(256 * 1024)})
    try:
        result = subprocess.run(
            [str(Path(sys.executable).with_name("schemathesis")), "run", f"{stack.url}/openapi.json",
             "--header", f"Authorization: Bearer {ADMIN}", "--checks", CHECKS,
             "--phases", "examples,coverage,fuzzing", "--max-examples", FUZZ_EXAMPLES,
             "--max-time", FUZZ_MAX_SECONDS, "--workers", "1", "--seed", "9", "--generation-deterministic",
             "--suppress-health-check", "all", "--request-timeout", "30", "--no-color", "--continue-on-failure",
             "--warnings", "off"],
            capture_output=True, text=True, timeout=int(FUZZ_MAX_SECONDS) + 120,
            cwd=tmp_path,  # schemathesis keeps its cache in .schemathesis/ under the working directory
        )
    finally:
        stack.stop()
        redis_server.stop()
    report = result.stdout[-12000:] + result.stderr[-3000:]
    assert result.returncode == 0, report
    assert "No issues found" in result.stdout or " passed" in result.stdout, report
