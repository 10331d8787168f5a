"""The comfyfleet processes a test runs for real: the API (uvicorn) and RQ workers, over real Redis."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from tests.support.procs import ManagedProcess, free_port, python_module, wait_for

ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-0123456789abcdef00"
ADMIN = "admin-token-0123456789abcdef"
TOKENS = [
    {"token": ALICE, "owner": "alice", "admin": False},
    {"token": BOB, "owner": "bob", "admin": False},
    {"token": ADMIN, "owner": "root", "admin": True},
]
FINAL = ("succeeded", "failed", "cancelled")


def auth(token: str = ALICE) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Stack:
    """API + workers with their own Redis key prefix, so stacks never see each other's jobs."""

    def __init__(self, tmp: Path, redis_url: str, comfyui_urls: list[str], *, workers: int = 2,
                 env: dict[str, str] | None = None, start_api: bool = True):
        self.tmp = tmp
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.redis_url = redis_url
        self.prefix = "t" + uuid.uuid4().hex[:8]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            "COMFYFLEET_REDIS_URL": redis_url,
            "COMFYFLEET_REDIS_PREFIX": self.prefix,
            "COMFYFLEET_DATA_DIR": str(tmp / "data"),
            "COMFYFLEET_AUTH_MODE": "static",
            "COMFYFLEET_API_TOKENS": json.dumps(TOKENS),
            "COMFYFLEET_COMFYUI_URLS": ",".join(comfyui_urls),
            "COMFYFLEET_HOST": "127.0.0.1",
            "COMFYFLEET_PORT": str(self.port),
            "COMFYFLEET_HEALTH_INTERVAL_SECONDS": "0.3",
            "COMFYFLEET_RETRY_BACKOFF_SECONDS": "1",
            "COMFYFLEET_LEASE_TTL_SECONDS": "6",
            "COMFYFLEET_SILENCE_TIMEOUT_SECONDS": "3",
            "COMFYFLEET_DISPATCHER_PORT": "0",
            **(env or {}),
        }
        self.procs: list[ManagedProcess] = []
        self.workers: list[ManagedProcess] = []
        self.http = httpx.Client(base_url=self.url, timeout=30)
        if start_api:
            self.start_api()
        for _ in range(workers):
            self.add_worker()

    def start_api(self) -> None:
        proc = ManagedProcess(python_module("comfyfleet", "api"), env=self.env, log_path=self.tmp / "api.log")
        self.procs.append(proc)
        wait_for(lambda: self.http.get("/health").status_code == 200, timeout=30, what="API /health")

    def add_worker(self) -> ManagedProcess:
        n = len(self.workers)
        proc = ManagedProcess(python_module("comfyfleet", "dispatcher"), env=self.env,
                              log_path=self.tmp / f"worker-{n}.log")
        self.procs.append(proc)
        self.workers.append(proc)
        return proc

    def wait_workers_ready(self, count: int, timeout: float = 20) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            body = self.http.get("/api/comfyui/workers", headers=auth()).json()
            return body if body["ready"] >= count else None

        return wait_for(ready, timeout=timeout, what=f"{count} ready workers")  # type: ignore[return-value]

    def generate(self, body: dict[str, Any], token: str = ALICE, **kw: Any) -> httpx.Response:
        return self.http.post("/api/comfyui/generate", json=body, headers={**auth(token), **kw.pop("headers", {})},
                              **kw)

    def job(self, job_id: str, token: str = ALICE) -> dict[str, Any]:
        r = self.http.get(f"/api/comfyui/job/{job_id}", headers=auth(token))
        r.raise_for_status()
        return r.json()

    def wait_state(self, job_id: str, states: tuple[str, ...] | str = FINAL, timeout: float = 30,
                   token: str = ALICE) -> dict[str, Any]:
        wanted = (states,) if isinstance(states, str) else states
        last: dict[str, Any] = {}

        def reached() -> dict[str, Any] | None:
            nonlocal last
            last = self.job(job_id, token)
            return last if last["state"] in wanted else None

        try:
            return wait_for(reached, timeout=timeout, interval=0.1, what=f"job {job_id} in {wanted}")  # type: ignore
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; last seen {last.get('state')}: {last.get('error')}\n{self.logs()}") from None

    def logs(self) -> str:
        return "\n".join(f"--- {p.log_path.name} ---\n{p.log_text()[-3000:]}" for p in self.procs)

    def stop(self) -> None:
        self.http.close()
        for proc in reversed(self.procs):
            proc.stop()


def wait_until(cond, timeout: float = 20, what: str = "") -> Any:
    return wait_for(cond, timeout=timeout, interval=0.1, what=what)


def elapsed(since: float) -> float:
    return time.monotonic() - since
