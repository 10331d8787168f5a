"""A real redis-server for the test session."""

from __future__ import annotations

import shutil
from pathlib import Path

import redis

from tests.support.procs import ManagedProcess, free_port, wait_for


class RedisServer:
    def __init__(self, workdir: Path):
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: apt-get install -y redis-server")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        workdir.mkdir(parents=True, exist_ok=True)
        self.proc = ManagedProcess(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(workdir)],
            log_path=workdir / "redis.log",
        )
        wait_for(lambda: redis.Redis.from_url(self.url).ping(), timeout=15, what="redis-server")

    def stop(self) -> None:
        self.proc.stop()
