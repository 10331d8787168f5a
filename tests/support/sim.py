"""Run the ComfyUI simulator as a real subprocess for tests: one pod, or many pods in one process.

    with running_sim(tmp_path, step_seconds=0.01) as sim:
        httpx.get(sim.url + "/system_stats")

    with running_sim_fleet(tmp_path, 50, step_seconds=0.01, pod_knobs={3: {"hang": True}}) as fleet:
        urls = fleet.urls                    # one per pod, in pod order
        fleet.pods[3].output_dir             # each pod's own folders

Knobs are SimSettings field names (step_seconds, checkpoints, loras, failure_rate, crash_after_steps, hang,
slow_start_seconds, cache, slow_node_seconds, slow_node_class, data_dir) plus preview_method, and are passed
as command-line flags; in a fleet they apply to every pod, and pod_knobs ({index: {knob: value}}) override
them per pod.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.support.procs import ManagedProcess, free_port, python_module, wait_for, wait_http_ok

_FLAGS = {
    "step_seconds": "--step-seconds",
    "failure_rate": "--failure-rate",
    "crash_after_steps": "--crash-after-steps",
    "slow_start_seconds": "--slow-start",
    "checkpoints": "--checkpoints",
    "loras": "--loras",
    "preview_method": "--preview-method",
    "slow_node_seconds": "--slow-node-seconds",
    "slow_node_class": "--slow-node",
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
        elif name == "cleanup_route":
            args += [] if value else ["--no-cleanup-route"]
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


@dataclass(frozen=True)
class FleetPod:
    """One pod of a multi-pod simulator process."""

    index: int
    url: str
    data_dir: Path

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 80

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http") + "/ws"

    @property
    def output_dir(self) -> Path:
        return self.data_dir / "output"

    @property
    def input_dir(self) -> Path:
        return self.data_dir / "input"


class SimFleet:
    """A simulator process hosting several pods: their URLs (pod order), folders, the process and its log."""

    def __init__(self, proc: ManagedProcess, data_dir: Path, urls_file: Path):
        self.proc = proc
        self.data_dir = data_dir
        self.urls_file = urls_file
        self.pods: list[FleetPod] = []

    @property
    def urls(self) -> list[str]:
        return [p.url for p in self.pods]

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait for the URL list (written once every pod without a slow start listens)."""

        def listed() -> bool:
            if not self.proc.alive():
                raise RuntimeError(f"simulator exited with {self.proc.proc.returncode}")
            return self.urls_file.exists()

        wait_for(listed, timeout=timeout, interval=0.05, what="the simulator's URL list")
        urls = self.urls_file.read_text().split()
        dirs = [self.data_dir] if len(urls) == 1 else [self.data_dir / f"pod-{i}" for i in range(len(urls))]
        self.pods = [FleetPod(i, url, d) for i, (url, d) in enumerate(zip(urls, dirs, strict=True))]

    def alive(self) -> bool:
        return self.proc.alive()

    def stop(self) -> None:
        self.proc.stop()

    def kill(self) -> None:
        self.proc.kill()

    def log_text(self) -> str:
        return self.proc.log_text()


def fleet_args(count: int, data_dir: Path, urls_file: Path, *, host: str = "127.0.0.1", port: int = 0,
               ports: list[int] | None = None, hosts: list[str] | None = None,
               pod_knobs: dict[int, dict[str, Any]] | None = None, **knobs: Any) -> list[str]:  # fmt: skip
    """Command-line flags for a multi-pod process: `count` pods on free ports unless ports/hosts say otherwise."""
    args = sim_args(host, port, data_dir, **knobs) + ["--urls-file", str(urls_file)]
    if ports:
        args += ["--ports", ",".join(map(str, ports))]
    else:
        args += ["--count", str(count)]
    if hosts:
        args += ["--hosts", ",".join(hosts)]
    if pod_knobs:
        args += ["--pod-knobs", json.dumps({str(i): k for i, k in pod_knobs.items()})]
    return args


def start_sim_fleet(tmp_path: Path, count: int, *, wait: bool = True, **kwargs: Any) -> SimFleet:
    """Start one `python -m comfyfleet.sim` hosting `count` pods (see fleet_args); waits for the URL list."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    data_dir = Path(kwargs.pop("data_dir", None) or tmp_path / "sim-fleet")
    urls_file = tmp_path / "sim-fleet-urls.txt"
    urls_file.unlink(missing_ok=True)
    args = fleet_args(count, data_dir, urls_file, **kwargs)
    proc = ManagedProcess(python_module("comfyfleet.sim", *args), log_path=tmp_path / "sim-fleet.log")
    fleet = SimFleet(proc, data_dir, urls_file)
    if wait:
        try:
            fleet.wait_ready()
        except (TimeoutError, RuntimeError) as ex:
            fleet.stop()
            raise TimeoutError(f"simulator fleet did not start ({ex}); log:\n{fleet.log_text()}") from None
    return fleet


@contextmanager
def running_sim_fleet(tmp_path: Path, count: int, **kwargs: Any) -> Iterator[SimFleet]:
    """start_sim_fleet as a context manager that always stops the process."""
    fleet = start_sim_fleet(tmp_path, count, **kwargs)
    try:
        yield fleet
    finally:
        fleet.stop()
