"""Run the ComfyUI simulator as a real subprocess for tests.

    with running_sim(tmp_path, step_seconds=0.01) as sim:
        httpx.get(sim.url + "/system_stats")

Knobs are SimSettings field names (step_seconds, checkpoints, loras, failure_rate, crash_after_steps, hang,
slow_start_seconds, cache, data_dir) plus preview_method, and are passed as command-line flags.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.procs import ManagedProcess, free_port, python_module, wait_for, wait_http_ok

_FLAGS = {
    "step_seconds": "--step-seconds",
    "failure_rate": "--failure-rate",
    "crash_after_steps": "--crash-after-steps",
    "slow_start_seconds": "--slow-start",
    "checkpoints": "--checkpoints",
    "loras": "--loras",
    "preview_method": "--preview-method",
}


class SimProcess:
    """A simulator subprocess: its URL, data folder and log."""

    def __init__(self, proc: ManagedProcess, host: str, port: int, data_dir: Path):
        self.proc = proc
        self.host = host
        self.port = port
        self.data_dir = data_dir

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws"

    @property
    def output_dir(self) -> Path:
        return self.data_dir / "output"

    @property
    def input_dir(self) -> Path:
        return self.data_dir / "input"

    def alive(self) -> bool:
        return self.proc.alive()

    def wait_ready(self, timeout: float = 20.0) -> None:
        wait_http_ok(self.url + "/system_stats", timeout=timeout)

    def wait_exit(self, timeout: float = 10.0) -> int:
        """Wait for the process to end on its own (crash knob); returns its exit code."""
        wait_for(lambda: not self.proc.alive(), timeout=timeout, what="simulator exit")
        code = self.proc.proc.returncode
        assert code is not None
        return code

    def stop(self) -> None:
        self.proc.stop()

    def kill(self) -> None:
        self.proc.kill()

    def log_text(self) -> str:
        return self.proc.log_text()


def sim_args(host: str, port: int, data_dir: Path, **knobs: Any) -> list[str]:
    """Command-line flags for the given knobs."""
    args = ["--listen", host, "--port", str(port), "--data-dir", str(data_dir)]
    for name, value in knobs.items():
        if value is None:
            continue
        if name == "hang":
            args += ["--hang"] if value else []
        elif name == "cache":
            args += [] if value else ["--cache-none"]
        elif name in _FLAGS:
            text = ",".join(value) if isinstance(value, list | tuple) else str(value)
            args += [_FLAGS[name], text]
        else:
            raise TypeError(f"unknown simulator knob {name!r}")
    return args


def start_sim(
    tmp_path: Path, host: str = "127.0.0.1", port: int | None = None, wait: bool = True, **knobs: Any
) -> SimProcess:
    """Start `python -m comfyfleet.sim` with its data in tmp_path; waits for /system_stats unless wait=False."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    data_dir = Path(knobs.pop("data_dir", None) or tmp_path / f"sim-{port}")
    log_path = tmp_path / f"sim-{port}.log"
    proc = ManagedProcess(python_module("comfyfleet.sim", *sim_args(host, port, data_dir, **knobs)), log_path=log_path)
    sim = SimProcess(proc, host, port, data_dir)
    if wait:
        try:
            sim.wait_ready()
        except TimeoutError:
            sim.stop()
            raise TimeoutError(f"simulator did not start; log:\n{sim.log_text()}") from None
    return sim


@contextmanager
def running_sim(tmp_path: Path, **kwargs: Any) -> Iterator[SimProcess]:
    """start_sim as a context manager that always stops the process."""
    sim = start_sim(tmp_path, **kwargs)
    try:
        yield sim
    finally:
        sim.stop()
