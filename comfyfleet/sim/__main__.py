"""`python -m comfyfleet.sim` / `comfyfleet sim`: run the ComfyUI simulator.

ComfyUI's own flags (`--listen`, `--port`, `--cache-none`, `--enable-cors-header`, `--cpu`) plus the
simulator's knobs. Each knob defaults to its COMFYFLEET_SIM_* setting; a flag overrides it.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
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
    p.add_argument("--preview-method", default="none", choices=["none", "auto", "latent2rgb", "taesd"],
                   help="send binary latent previews while sampling (ComfyUI flag; default none)")
    p.add_argument("--step-seconds", type=float, default=None, help="seconds per KSampler step")
    p.add_argument("--checkpoints", default=None, help="comma list of checkpoint names offered")
    p.add_argument("--loras", default=None, help="comma list of LoRA names offered")
    p.add_argument("--failure-rate", type=float, default=None, help="probability a prompt fails at run time (OOM)")
    p.add_argument("--crash-after-steps", type=int, default=None,
                   help="exit the process abruptly after this many sampler steps of a job (0 = never)")
    p.add_argument("--hang", action="store_true", default=None, help="accept prompts but never finish them")
    p.add_argument("--slow-start", type=float, default=None, metavar="SECONDS",
                   help="wait this long before listening, like a cold ComfyUI")
    p.add_argument("--data-dir", type=Path, default=None, help="folder holding output/, input/, temp/")
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
    }
    return SimSettings(**{k: v for k, v in overrides.items() if v is not None})


def prepare_data_dir(root: Path | None) -> DataDirs:
    """output/, input/ (with ComfyUI's example.png) and an emptied temp/; a fresh temp dir by default."""
    dirs = DataDirs(Path(root) if root else Path(tempfile.mkdtemp(prefix="comfyfleet-sim-")))
    dirs.prepare()
    example = dirs.input / "example.png"
    if not example.exists():
        Image.new("RGB", (64, 64), (128, 128, 128)).save(example)
    return dirs


def main(argv: list[str] | None = None) -> None:
    """Parse flags, wait out the slow start, then serve until SIGINT/SIGTERM."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings(args)
    dirs = prepare_data_dir(settings.data_dir)
    models = Models(list(settings.checkpoints), list(settings.loras), dirs.input)
    faults = Faults(
        step_seconds=settings.step_seconds,
        failure_rate=settings.failure_rate,
        crash_after_steps=settings.crash_after_steps,
        hang=settings.hang,
        cache=settings.cache,
        preview_method=args.preview_method,
    )
    argv_shown = ("main.py", *(argv if argv is not None else sys.argv[1:]))
    options = ServerOptions(cors_origin=args.enable_cors_header, cpu=args.cpu, argv=tuple(argv_shown))
    if settings.slow_start_seconds:
        log.info("slow start: listening in %.1f s", settings.slow_start_seconds)
        time.sleep(settings.slow_start_seconds)
    hosts = [h for h in settings.host.split(",") if h]
    log.info("data dir %s; faults %s", dirs.root, faults)
    log.info("To see the GUI go to: http://%s:%d", hosts[0], settings.port)
    web.run_app(create_app(models, dirs, faults, options), host=hosts, port=settings.port, print=None,
                access_log=None, shutdown_timeout=5)  # fmt: skip


if __name__ == "__main__":
    main()
