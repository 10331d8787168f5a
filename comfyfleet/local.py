"""`comfyfleet up`: the whole system on one machine as supervised child processes.

Redis (started if none answers), K ComfyUI simulators (or real ComfyUI URLs), the API and N dispatchers
(one is enough for any number of endpoints up to its 256 slots; more are for trying out hand-over).
Every child runs in its own process group and is stopped (SIGTERM, then SIGKILL) when the stack stops.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from comfyfleet.settings import LocalSettings

log = logging.getLogger(__name__)

# A cold simulator or API process starts in well under 10 s on 2 cores; 60 s covers a loaded CI machine.
START_TIMEOUT_SECONDS = 60.0


class StackError(RuntimeError):
    """The local stack could not start; the message says which part and why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0f s; killing it", self.name, timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@dataclass
class LocalStack:
    port: int = 8000
    data_dir: Path = Path(".data")
    dispatchers: int = 1
    sims: int = 2
    comfyui_urls: list[str] = field(default_factory=list)
    redis_url: str | None = None
    sim_args: list[str] = field(default_factory=list)
    children: list[Child] = field(default_factory=list)
    sim_urls: list[str] = field(default_factory=list)
    settings: LocalSettings = field(default_factory=LocalSettings)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Child:
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{name}.log"
        out = open(log_path, "ab")  # noqa: SIM115 - the child owns it; closed when this process exits
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                start_new_session=True)
        child = Child(name, proc, log_path)
        self.children.append(child)
        return child

    def start(self) -> None:
        self.data_dir = self.data_dir.resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            url = self._ensure_redis()
            urls = [*self._start_sims(), *self.comfyui_urls]
            if not urls:
                raise StackError("no ComfyUI: give --sims K or --comfyui-url URL")
            env = {
                "COMFYFLEET_REDIS_URL": url,
                "COMFYFLEET_DATA_DIR": str(self.data_dir),
                "COMFYFLEET_COMFYUI_URLS": ",".join(urls),
                "COMFYFLEET_AUTH_MODE": self.settings.auth_mode,
                "COMFYFLEET_HOST": "127.0.0.1",
                "COMFYFLEET_PORT": str(self.port),
                "COMFYFLEET_HEALTH_INTERVAL_SECONDS": str(self.settings.health_interval_seconds),
            }
            self._spawn("api", [sys.executable, "-m", "comfyfleet", "api"], env)
            for i in range(self.dispatchers):
                self._spawn(f"dispatcher-{i}", [sys.executable, "-m", "comfyfleet", "dispatcher",
                                                "--port", str(free_port())], env)
            self._wait_ready(len(urls))
        except BaseException:
            self.stop()
            raise

    def _ensure_redis(self) -> str:
        if self.redis_url:
            return self.redis_url
        default = self.settings.redis_url
        if default and _redis_ok(default):
            return default
        binary = shutil.which("redis-server")
        if binary is None:
            raise StackError("no Redis answers and redis-server is not installed (apt-get install redis-server)")
        port = free_port()
        self._spawn("redis", [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                              "--dir", str(self.data_dir)])
        url = f"redis://127.0.0.1:{port}/0"
        _wait(lambda: _redis_ok(url), "redis-server", self)
        return url

    def _start_sims(self) -> list[str]:
        """One simulator process hosting every simulated pod (`comfyfleet sim --count K`), each on a free port."""
        if self.sims <= 0:
            return []
        urls_file = self.data_dir / "sim-urls.txt"
        urls_file.unlink(missing_ok=True)
        self._spawn("sim", [sys.executable, "-m", "comfyfleet", "sim", "--listen", "127.0.0.1", "--port", "0",
                            "--count", str(self.sims), "--urls-file", str(urls_file),
                            "--data-dir", str(self.data_dir / "sim"), *self.sim_args])
        _wait(urls_file.exists, "the simulated ComfyUI pods", self)
        self.sim_urls = urls_file.read_text().split()
        return self.sim_urls

    def _wait_ready(self, expected_workers: int) -> None:
        def ready() -> bool:
            r = httpx.get(f"{self.api_url}/health/detailed", timeout=2)
            return r.status_code == 200 and r.json()["workers"]["ready"] >= min(expected_workers, 1)

        _wait(ready, "the API and a ready ComfyUI worker", self)

    def check_children(self) -> None:
        for child in self.children:
            if child.proc.poll() is not None:
                raise StackError(f"{child.name} exited with {child.proc.returncode}; see {child.log_path}")

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()
        self.children.clear()


def _redis_ok(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1).ping())
    except (redis.RedisError, ValueError):
        return False


def _wait(condition: Callable[[], object], what: str, stack: LocalStack) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        stack.check_children()
        try:
            if condition():
                return
        except (httpx.HTTPError, redis.RedisError, KeyError, ValueError):
            pass
        time.sleep(0.2)
    raise StackError(f"timed out waiting for {what}; logs in {stack.data_dir / 'logs'}")


