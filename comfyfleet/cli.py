"""The `comfyfleet` command: up, demo, submit, status, jobs, api, worker, sim, operator."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from comfyfleet.local import LocalStack
from comfyfleet.observability.logs import setup_logging
from comfyfleet.settings import LocalSettings

if TYPE_CHECKING:
    from fastapi import FastAPI

REPO_EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def cmd_api(args: argparse.Namespace) -> None:
    import uvicorn

    from comfyfleet.api.server import HttpProtocol
    from comfyfleet.settings import ApiSettings

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port), ("api_workers", args.workers))
                 if v is not None}
    settings = ApiSettings(**overrides)  # validated once here, before any worker starts
    setup_logging("api", settings)
    # Each uvicorn worker builds its app (and its logging) from the environment through an import-string
    # factory, so workers can be spawned; the flags reach them as the settings they override. uvloop +
    # httptools: faster than the plain asyncio loop and h11, and with several workers the plain loop loses
    # TCP_NODELAY (uvicorn #3149); HttpProtocol: httptools with each response in one write (api/server.py).
    # log_config=None: uvicorn's lines go through our handler (JSON or text).
    os.environ.update({"COMFYFLEET_HOST": settings.host, "COMFYFLEET_PORT": str(settings.port),
                       "COMFYFLEET_API_WORKERS": str(settings.api_workers)})
    uvicorn.run("comfyfleet.cli:api_app", factory=True, host=settings.host, port=settings.port,
                workers=settings.api_workers, loop="uvloop", http=HttpProtocol,
                log_level=settings.log_level.lower(), access_log=False, log_config=None)


def api_app() -> FastAPI:
    """The uvicorn factory of `comfyfleet api`: settings from the environment, logging set up in this process
    (a spawned worker starts with none)."""
    from comfyfleet.api.app import create_app
    from comfyfleet.settings import ApiSettings

    settings = ApiSettings()
    setup_logging("api", settings)
    return create_app(settings)


def cmd_dispatcher(args: argparse.Namespace) -> None:
    from comfyfleet.dispatch.engine import run
    from comfyfleet.settings import DispatchSettings

    overrides = {"max_in_flight": args.max_in_flight} if args.max_in_flight else {}
    if args.port is not None:
        overrides["dispatcher_port"] = args.port
    settings = DispatchSettings(**overrides)
    setup_logging("dispatch", settings)  # HOOK(observability): JSON/text format, per-component levels
    if args.command == "worker":
        logging.getLogger("comfyfleet").warning(
            "`comfyfleet worker` is now `comfyfleet dispatcher` (one process drives many endpoints); "
            "--concurrency is ignored")
    run(settings)


def cmd_sim(args: argparse.Namespace, rest: list[str]) -> None:
    from comfyfleet.sim.__main__ import main as sim_main

    sim_main(rest)


def cmd_operator(args: argparse.Namespace) -> None:
    from comfyfleet.operator.main import run as run_operator

    run_operator()


def _stack(args: argparse.Namespace) -> LocalStack:

    return LocalStack(port=args.port, data_dir=Path(args.data_dir), dispatchers=args.dispatchers, sims=args.sims,
                      comfyui_urls=args.comfyui_url or [], redis_url=args.redis_url)


def cmd_up(args: argparse.Namespace) -> None:
    from comfyfleet.local import StackError

    _logging()
    stack = _stack(args)
    stopping = {"flag": False}

    def stop(signum: int, frame: object) -> None:
        stopping["flag"] = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        stack.start()
        print(f"comfyfleet is up: API {stack.api_url} (docs {stack.api_url}/docs), "
              f"{args.dispatchers} dispatcher(s), ComfyUI at {', '.join(stack.sim_urls + (args.comfyui_url or []))}")
        print("Ctrl-C stops everything.")
        while not stopping["flag"]:
            stack.check_children()
            time.sleep(0.5)
    except StackError as exc:
        print(f"comfyfleet up: {exc}", file=sys.stderr)
        sys.exit(1)
    finally:
        stack.stop()
        print("comfyfleet stopped.")


def cmd_submit(args: argparse.Namespace) -> None:
    from comfyfleet.submit import SubmitError, SubmitOptions, build_body, parse_params, submit

    try:
        if (args.workflow is None) == (args.template is None):
            raise SubmitError("give a WORKFLOW.json or --template NAME (not both)")
        body = build_body(Path(args.workflow) if args.workflow else None, args.template, parse_params(args.param),
                          list(args.image), args.priority, webhook=args.webhook, output_format=args.format,
                          quality=args.quality)
        opts = SubmitOptions(api=args.api or LocalSettings().api, token=args.token or LocalSettings().token,
                             wait=args.wait, out_dir=Path(args.out), quiet=args.quiet)
        job, paths = submit(body, opts)
    except (SubmitError, OSError, ValueError) as exc:
        print(f"comfyfleet submit: {exc}", file=sys.stderr)
        sys.exit(1)
    if not args.wait:
        print(job["jobId"])
    for path in paths:
        print(path)


def cmd_console(args: argparse.Namespace) -> None:
    """`comfyfleet status` / `comfyfleet jobs`: read the public API and print (or --watch) a summary."""
    from comfyfleet.observability.console import ConsoleError, run

    local = LocalSettings()
    try:
        run(args.command, args.api or local.api, args.token or local.token, watch=args.watch, colour=args.color,
            limit=getattr(args, "limit", 20), user=getattr(args, "user", None))
    except ConsoleError as exc:
        print(f"comfyfleet {args.command}: {exc}", file=sys.stderr)
        sys.exit(1)


def cmd_demo(args: argparse.Namespace) -> None:
    from comfyfleet.local import StackError
    from comfyfleet.submit import SubmitError, SubmitOptions, build_body, submit

    _logging("WARNING")
    stack = _stack(args)
    try:
        stack.start()
        print(f"stack up: API {stack.api_url}, {args.sims} simulated ComfyUI pods, {args.dispatchers} dispatcher(s)",
              file=sys.stderr)
        body = build_body(REPO_EXAMPLES / "txt2img.json", None,
                          {"prompt": "a lighthouse on a cliff at dawn, oil painting", "seed": 42, "steps": 12}, [], 5)
        _, paths = submit(body, SubmitOptions(api=stack.api_url, out_dir=Path(args.data_dir) / "demo-outputs"))
    except (StackError, SubmitError) as exc:
        print(f"comfyfleet demo: {exc}", file=sys.stderr)
        sys.exit(1)
    finally:
        stack.stop()
    for path in paths:
        print(path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="comfyfleet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def stack_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--port", type=int, default=8000, help="API port (default 8000)")
        p.add_argument("--data-dir", default=".data", help="outputs, logs and simulator files (default .data)")
        p.add_argument("--dispatchers", "--workers", type=int, default=1,
                       help="dispatcher processes (default 1: it drives every endpoint, up to 256 at once; "
                            "--workers is the old name)")
        p.add_argument("--sims", type=int, default=2, help="ComfyUI simulators to start (default 2)")
        p.add_argument("--comfyui-url", action="append", help="a real ComfyUI to use (repeatable)")
        p.add_argument("--redis-url", help="use this Redis instead of starting one")

    up = sub.add_parser("up", help="run the whole system locally (Redis, API, dispatcher, simulators)")
    stack_args(up)
    up.set_defaults(func=cmd_up)
    demo = sub.add_parser("demo", help="start the local system, generate one image, print its path, stop")
    stack_args(demo)
    demo.set_defaults(func=cmd_demo)

    sm = sub.add_parser("submit", help="submit a workflow or template to the API")
    sm.add_argument("workflow", nargs="?", help="API-format workflow JSON file")
    sm.add_argument("--template", help="a named template instead of a workflow file")
    sm.add_argument("--param", action="append", default=[], help="parameter override key=value (repeatable)")
    sm.add_argument("--image", action="append", default=[],
                    help="input image for LoadImage: a file or an https:// URL (repeatable)")
    sm.add_argument("--webhook", help="https URL to notify (signed) when the job ends")
    sm.add_argument("--format", choices=["png", "webp", "jpeg"], help="convert outputs to this format")
    sm.add_argument("--quality", type=int, help="webp/jpeg quality 1-100")
    sm.add_argument("--priority", type=int, default=5)
    sm.add_argument("--api", help="API base URL (or COMFYFLEET_API; default http://127.0.0.1:8000)")
    sm.add_argument("--token", help="bearer token (or COMFYFLEET_TOKEN)")
    sm.add_argument("--wait", action="store_true", help="follow progress and download the outputs")
    sm.add_argument("--out", default="outputs", help="where --wait downloads outputs (default ./outputs)")
    sm.add_argument("--quiet", action="store_true", help="no progress bar")
    sm.set_defaults(func=cmd_submit)

    def console_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--api", help="API base URL (or COMFYFLEET_API; default http://127.0.0.1:8000)")
        p.add_argument("--token", help="bearer token (or COMFYFLEET_TOKEN)")
        p.add_argument("--watch", nargs="?", type=float, const=2.0, default=None, metavar="SECONDS",
                       help="redraw every SECONDS (default 2) until Ctrl-C")
        colour = p.add_mutually_exclusive_group()
        colour.add_argument("--color", dest="color", action="store_true", default=None, help="always colour")
        colour.add_argument("--no-color", dest="color", action="store_false", help="never colour")
        p.set_defaults(func=cmd_console)

    st = sub.add_parser("status", help="pools, endpoints, queue per priority and pool, oldest job")
    console_args(st)
    jb = sub.add_parser("jobs", help="recent jobs with state, wait and run time")
    console_args(jb)
    jb.add_argument("--limit", type=int, default=20, help="how many jobs (1-100, default 20)")
    jb.add_argument("--user", help="another user's jobs (admins only)")

    api = sub.add_parser("api", help="run the REST API")
    api.add_argument("--host")
    api.add_argument("--port", type=int)
    api.add_argument("--workers", type=int, help="uvicorn worker processes (default 1; COMFYFLEET_API_WORKERS)")
    api.set_defaults(func=cmd_api)
    for name, text in (("dispatcher", "run a dispatcher (drives up to --max-in-flight jobs on many endpoints)"),
                       ("worker", "deprecated name of `dispatcher`")):
        d = sub.add_parser(name, help=text)
        d.add_argument("--max-in-flight", type=int, help="jobs at once (default 256; COMFYFLEET_MAX_IN_FLIGHT)")
        d.add_argument("--port", type=int, help="/healthz and /metrics port (default 8081; 0 = off)")
        if name == "worker":
            d.add_argument("--concurrency", type=int, help=argparse.SUPPRESS)
            d.add_argument("--burst", action="store_true", help=argparse.SUPPRESS)
        d.set_defaults(func=cmd_dispatcher)
    sub.add_parser("sim", help="run the ComfyUI simulator (flags: --help)", add_help=False).set_defaults(func=cmd_sim)
    sub.add_parser("operator", help="run the Kubernetes operator (kopf)").set_defaults(func=cmd_operator)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if argv and argv[0] == "sim":
        cmd_sim(argparse.Namespace(), argv[1:])
        return
    args = parser.parse_args(argv)
    args.func(args)
