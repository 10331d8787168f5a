"""One simulator process hosting many simulated pods: each its own app, queue, worker thread and folders.

A pod is one aiohttp AppRunner with a site per address, all on the process's single event loop; each pod
keeps its own executor thread (as ComfyUI's prompt_worker), so pods run prompts in parallel and share
nothing but the process. With one pod the process behaves exactly as a real ComfyUI: its data lives in
--data-dir and the crash knob exits the process. With several, pod i keeps its data in
<data-dir>/pod-<i>/ and the crash knob drops only that pod's listener and connections; the pod then
stays silent (connection refused) until the process ends, as a dead pod would until it is restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ipaddress
import logging
import os
import resource
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from aiohttp import web
from PIL import Image

from comfyfleet.settings import SimSettings
from comfyfleet.sim.app import create_app
from comfyfleet.sim.catalog import Models
from comfyfleet.sim.executor import Faults
from comfyfleet.sim.paths import DataDirs
from comfyfleet.sim.server import ServerOptions

log = logging.getLogger("comfyfleet.sim")

# The pod a log line comes from. Set in the pod's start task, it reaches everything the pod starts from
# there: its worker thread, its websocket publisher, and (through the listener's accept callback) every
# request handler.
POD_LABEL: contextvars.ContextVar[str] = contextvars.ContextVar("sim_pod_label", default="")


class PodLogFilter(logging.Filter):
    """Adds `pod` (" pod-3", or "" outside a pod) to every record, for a multi-pod process's log format."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.pod = POD_LABEL.get()
        return True


# Seconds a stopping pod waits for its open requests (aiohttp's run_app default is 60; a test stops fast).
SHUTDOWN_TIMEOUT_SECONDS = 5.0


class FleetPlanError(ValueError):
    """The addresses or per-pod knobs asked for cannot be served; the message names the setting."""


@dataclass(frozen=True)
class PodPlan:
    """Where one pod listens and keeps its files."""

    index: int
    hosts: tuple[str, ...]  # addresses of one pod (ComfyUI's comma-separated --listen)
    port: int  # 0 = a free port chosen by the OS at bind time
    data_dir: Path


def plan_pods(settings: SimSettings, root: Path) -> list[PodPlan]:
    """The pods to host: every address group (`hosts`, else `host`) times every port (`ports`, else
    `port`, `port`+1, … `count` of them; port 0 gives `count` pods on free ports)."""
    if settings.ports and settings.count != 1:
        raise FleetPlanError("give ports or count, not both")
    if settings.ports:
        ports = list(settings.ports)
    elif settings.port == 0:
        ports = [0] * settings.count
    else:
        ports = list(range(settings.port, settings.port + settings.count))
        if ports[-1] > 65535:
            raise FleetPlanError(f"count {settings.count} from port {settings.port} runs past port 65535")
    groups: list[tuple[str, ...]] = [(h,) for h in settings.hosts] or [tuple(h for h in settings.host.split(",") if h)]
    pairs = [(group, port) for group in groups for port in ports]
    fixed = [(group, port) for group, port in pairs if port]
    if len(set(fixed)) != len(fixed):
        raise FleetPlanError("the same address and port is given twice (hosts/ports)")
    single = len(pairs) == 1
    plans = [PodPlan(i, group, port, root if single else root / f"pod-{i}") for i, (group, port) in enumerate(pairs)]
    beyond = sorted(i for i in settings.pod_knobs if i >= len(plans))
    if beyond:
        raise FleetPlanError(f"pod_knobs name pods {beyond}, but only {len(plans)} pods (0-{len(plans) - 1}) run")
    return plans


def pod_url(host: str, port: int) -> str:
    """The URL a client on this machine uses for a pod bound to host:port (wildcards become loopback)."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    return f"http://{host}:{port}"


def faults_for(settings: SimSettings, preview_method: str) -> Faults:
    """The executor's knobs from (pod) settings."""
    return Faults(
        step_seconds=settings.step_seconds,
        failure_rate=settings.failure_rate,
        crash_after_steps=settings.crash_after_steps,
        hang=settings.hang,
        cache=settings.cache,
        preview_method=preview_method,
        slow_node_seconds=settings.slow_node_seconds,
        slow_node_class=settings.slow_node_class,
    )


def prepare_data_dir(root: Path | None) -> DataDirs:
    """output/, input/ (with ComfyUI's example.png) and an emptied temp/; a fresh temp dir by default."""
    dirs = DataDirs(Path(root) if root else Path(tempfile.mkdtemp(prefix="comfyfleet-sim-")))
    dirs.prepare()
    example = dirs.input / "example.png"
    if not example.exists():
        Image.new("RGB", (64, 64), (128, 128, 128)).save(example)
    return dirs


def bind_sockets(hosts: tuple[str, ...], port: int) -> list[socket.socket]:
    """Bound, not yet listening sockets for every address of hosts (connections are refused until a site
    starts). Port 0 takes the first free port and keeps it for the pod's other addresses."""
    sockets: list[socket.socket] = []
    seen: set[tuple[int, str]] = set()
    try:
        for host in hosts:
            infos = socket.getaddrinfo(host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
            for family, kind, proto, _, sockaddr in infos:
                address = str(sockaddr[0])
                if (family, address) in seen:
                    continue
                seen.add((family, address))
                sock = socket.socket(family, kind, proto)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    sock.bind((address, port, *sockaddr[2:]))
                except OSError as ex:
                    raise OSError(ex.errno, f"cannot listen on {pod_url(address, port)}: {ex.strerror}") from ex
                port = port or sock.getsockname()[1]
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class SimPod:
    """One simulated pod: its app (queue, history, executor thread, folders, knobs) and its sockets."""

    def __init__(self, plan: PodPlan, settings: SimSettings, options: ServerOptions, preview_method: str,
                 *, in_fleet: bool):  # fmt: skip
        self.plan = plan
        self.slow_start = settings.slow_start_seconds
        self.dirs = prepare_data_dir(plan.data_dir)
        models = Models(list(settings.checkpoints), list(settings.loras), self.dirs.input)
        self.faults = faults_for(settings, preview_method)
        if in_fleet:
            options = replace(options, on_crash=self.crash)
        self.runner = web.AppRunner(create_app(models, self.dirs, self.faults, options), access_log=None,
                                    shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS)  # fmt: skip
        self.sockets = bind_sockets(plan.hosts, plan.port)
        # The URL clients use: the first address's, on the port bound (a wildcard address becomes loopback).
        self.url = pod_url(plan.hosts[0], self.sockets[0].getsockname()[1])
        self.crashed = False
        self.started = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Wait out the slow start, start the app (its worker thread) and listen."""
        POD_LABEL.set(f" pod-{self.plan.index}")
        if self.slow_start:
            log.info("pod %d slow start: listening in %.1f s", self.plan.index, self.slow_start)
            await asyncio.sleep(self.slow_start)
        await self.runner.setup()
        self.started = True
        for sock in self.sockets:
            await web.SockSite(self.runner, sock).start()

    async def stop(self) -> None:
        """Graceful: close websockets (1001 Server shutdown), stop listening."""
        if self.started:
            await self.runner.cleanup()
        for sock in self.sockets:
            sock.close()

    def crash(self) -> None:
        """On the loop, for the crash knob: stop listening and cut every connection, without goodbyes."""
        task = asyncio.get_running_loop().create_task(self._drop())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drop(self) -> None:
        self.crashed = True
        for site in list(self.runner.sites):
            await site.stop()
        server = self.runner.server
        for handler in server.connections if server else []:
            if handler.transport is not None:
                handler.transport.abort()
        log.error("pod %d (%s) crashed: no longer listening", self.plan.index, self.url)


def write_urls(path: Path, urls: list[str]) -> None:
    """One URL a line, replaced atomically so a reader polling for the file never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(u + "\n" for u in urls))
    os.replace(tmp, path)


def raise_open_files_limit() -> None:
    """Every pod holds a listener, a worker thread and its clients' connections: allow as many files as the
    hard limit does (the soft default of 1024 is two connections short of 200 pods with a dispatcher)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(pods: list[SimPod], urls_file: Path | None = None, print_urls: bool = False) -> None:
    """Run every pod until SIGINT/SIGTERM. The URL list is emitted once every pod without a slow start
    listens (slow-start pods are bound by then, so their ports are already known, but refuse connections)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    slow = [asyncio.create_task(p.start()) for p in pods if p.slow_start]
    await asyncio.gather(*(p.start() for p in pods if not p.slow_start))
    urls = [p.url for p in pods]
    if urls_file is not None:
        write_urls(urls_file, urls)
    if print_urls:
        sys.stdout.write("".join(u + "\n" for u in urls))
        sys.stdout.flush()
    if len(pods) == 1:
        log.info("To see the GUI go to: %s", urls[0])
    else:
        log.info("%d simulated pods: %s … %s", len(pods), urls[0], urls[-1])
    try:
        await stop.wait()
    finally:
        for task in slow:
            task.cancel()
        await asyncio.gather(*slow, return_exceptions=True)
        await asyncio.gather(*(p.stop() for p in pods), return_exceptions=True)
