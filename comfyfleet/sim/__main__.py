"""`python -m comfyfleet.sim` / `comfyfleet sim`: run the ComfyUI simulator, one pod or many.

ComfyUI's own flags (`--listen`, `--port`, `--cache-none`, `--enable-cors-header`, `--cpu`) plus the
simulator's knobs. Each knob defaults to its COMFYFLEET_SIM_* setting; a flag overrides it.
`--count N`, `--ports` or `--hosts` host many pods in this one process (see comfyfleet/sim/fleet.py);
`--urls-file`/`--print-urls` tell a caller where they listen.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
from pathlib import Path

from pydantic import ValidationError

from comfyfleet.settings import SimSettings
from comfyfleet.sim.fleet import (
    FleetPlanError,
    PodLogFilter,
    SimPod,
    plan_pods,
    prepare_data_dir,
    raise_open_files_limit,
    serve,
)
from comfyfleet.sim.server import ServerOptions

log = logging.getLogger("comfyfleet.sim")

__all__ = ["build_parser", "load_settings", "main", "prepare_data_dir"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="comfyfleet sim", description="A faithful stand-in for a ComfyUI 0.3.64 pod.")
    p.add_argument("--listen", nargs="?", const="0.0.0.0", default=None, metavar="IP",
                   help="address(es) to listen on, comma separated (ComfyUI flag; bare --listen = 0.0.0.0)")
    p.add_argument("--port", type=int, default=None, help="port (ComfyUI flag, default 8188)")
    p.add_argument("--cache-none", action="store_true", help="disable the output cache (ComfyUI flag)")
    p.add_argument("--cache-classic", action="store_true", help="classic output cache (ComfyUI flag, the default)")
    p.add_argument("--enable-cors-header", nargs="?", const="*", default=None, metavar="ORIGIN",
                   help="send CORS headers instead of the Origin check (ComfyUI flag)")
    p.add_argument("--cpu", action="store_true", help="report a CPU device in /system_stats (ComfyUI flag)")
    p.add_argument("--no-cleanup-route", action="store_true",
                   help="act as a plain ComfyUI: no POST /comfyfleet/cleanup (the worker image's custom node)")
    p.add_argument("--preview-method", default="none", choices=["none", "auto", "latent2rgb", "taesd"],
                   help="send binary latent previews while sampling (ComfyUI flag; default none)")
    p.add_argument("--step-seconds", type=float, default=None, help="seconds per KSampler step")
    p.add_argument("--checkpoints", default=None, help="comma list of checkpoint names offered")
    p.add_argument("--loras", default=None, help="comma list of LoRA names offered")
    p.add_argument("--failure-rate", type=float, default=None, help="probability a prompt fails at run time (OOM)")
    p.add_argument("--crash-after-steps", type=int, default=None,
                   help="exit the process abruptly after this many sampler steps of a job (0 = never); "
                        "with several pods, only that pod stops listening and drops its connections")
    p.add_argument("--hang", action="store_true", default=None, help="accept prompts but never finish them")
    p.add_argument("--slow-start", type=float, default=None, metavar="SECONDS",
                   help="wait this long before listening, like a cold ComfyUI")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="folder holding output/, input/, temp/ (with several pods: one pod-<i>/ folder each)")
    p.add_argument("--slow-node-seconds", type=float, default=None, metavar="SECONDS",
                   help="nodes of the --slow-node class take this long and honour no interrupt meanwhile")
    p.add_argument("--slow-node", default=None, metavar="CLASS", help="the slow node's class (default VAEDecode)")
    g = p.add_argument_group("many pods in one process")
    g.add_argument("--count", type=int, default=None,
                   help="pods on consecutive ports from --port (--port 0: each on a free port)")
    g.add_argument("--ports", default=None, help="comma list of ports, one pod each")
    g.add_argument("--hosts", default=None, help="comma list of addresses, one pod each per port (replaces --listen)")
    g.add_argument("--pod-knobs", default=None, metavar="JSON",
                   help='per-pod knob overrides by pod index, e.g. \'{"1": {"crash_after_steps": 3}}\'')
    g.add_argument("--urls-file", type=Path, default=None, help="write the pod URLs here, one a line, when ready")
    g.add_argument("--print-urls", action="store_true", help="print the pod URLs on stdout, one a line, when ready")
    p.add_argument("--log-level", default="INFO")
    return p  # fmt: skip


def load_settings(args: argparse.Namespace) -> SimSettings:
    """SimSettings from the environment, with every given flag overriding its field (and validated)."""
    overrides = {
        "host": args.listen,
        "port": args.port,
        "step_seconds": args.step_seconds,
        "checkpoints": args.checkpoints,
        "loras": args.loras,
        "failure_rate": args.failure_rate,
        "crash_after_steps": args.crash_after_steps,
        "hang": args.hang,
        "slow_start_seconds": args.slow_start,
        "data_dir": args.data_dir,
        "cache": False if args.cache_none else None,
        "slow_node_seconds": args.slow_node_seconds,
        "slow_node_class": args.slow_node,
        "count": args.count,
        "ports": args.ports,
        "hosts": args.hosts,
        "pod_knobs": json.loads(args.pod_knobs) if args.pod_knobs else None,
        "urls_file": args.urls_file,
    }
    return SimSettings(**{k: v for k, v in overrides.items() if v is not None})


def main(argv: list[str] | None = None) -> None:
    """Parse flags, bind every pod, then serve until SIGINT/SIGTERM."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings(args)
        root = settings.data_dir or Path(tempfile.mkdtemp(prefix="comfyfleet-sim-"))
        plans = plan_pods(settings, root)
    except (ValidationError, FleetPlanError, json.JSONDecodeError) as ex:
        parser.error(str(ex))
    argv_shown = ("main.py", *(argv if argv is not None else sys.argv[1:]))
    options = ServerOptions(cors_origin=args.enable_cors_header, cpu=args.cpu, argv=tuple(argv_shown),
                            cleanup_route=not args.no_cleanup_route)
    in_fleet = len(plans) > 1
    if in_fleet:
        raise_open_files_limit()
        for handler in logging.getLogger().handlers:
            handler.addFilter(PodLogFilter())
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s%(pod)s: %(message)s"))
    try:
        pods = [SimPod(plan, settings.for_pod(plan.index), options, args.preview_method, in_fleet=in_fleet)
                for plan in plans]  # fmt: skip
    except ValidationError as ex:
        parser.error(f"pod_knobs: {ex}")
    except OSError as ex:
        parser.error(str(ex))
    log.info("data dir %s; faults %s", root, pods[0].faults if len(pods) == 1 else f"{len(pods)} pods")
    asyncio.run(serve(pods, settings.urls_file, args.print_urls))


if __name__ == "__main__":
    main()
