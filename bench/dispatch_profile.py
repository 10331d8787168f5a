"""Where a job's dispatch time goes: the dispatcher process under pyinstrument for a batch of sequential jobs.

One simulator, one dispatcher run as `python -m pyinstrument -m comfyfleet dispatcher`, JOBS trivial jobs
(the `weightless` template) one after another through the API (submit, follow over SSE, fetch the
output, as bench/overhead.py does). The dispatcher is stopped with SIGTERM, pyinstrument saves its
session, and this script writes:

- bench/results/profile-dispatcher.txt: pyinstrument's text tree (event-loop thread);
- the top functions by own time and by inclusive time, per job, in the returned figures.

pyinstrument samples the main thread only (the event loop). The dispatcher also runs blocking Redis and RQ
calls in its I/O thread pools; their share is shown from /proc per thread (`dispatch-io*`, `dispatch-rq*`).

    python bench/dispatch_profile.py [--jobs 40]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
from common import CLK_TCK, RESULTS, Stack, cpu_seconds, start_pods, wait_until, workspace
from overhead import through_comfyfleet


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of one process: its event-loop (main) thread vs every other thread (the I/O pools)."""
    out = {"event_loop_thread": 0.0, "other_threads": 0.0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        key = "event_loop_thread" if task.name == str(pid) else "other_threads"
        out[key] += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def _aggregate(root: Any) -> tuple[dict[str, float], dict[str, float]]:
    """(own time, inclusive time) per function, seconds; inclusive counts a function once per stack."""
    own: dict[str, float] = defaultdict(float)
    inclusive: dict[str, float] = defaultdict(float)

    def name(frame: Any) -> str:
        path = frame.file_path_short or frame.file_path or ""
        return f"{frame.function} ({path}:{frame.line_no})" if path else str(frame.function)

    def walk(frame: Any, on_stack: frozenset[str], parent: str) -> None:
        if frame.is_synthetic:  # pyinstrument's "[self]" / "[await]" leaves: time spent in the parent itself
            own[parent] += frame.time
            return
        key = name(frame)
        own[key] += frame.total_self_time
        if key not in on_stack:
            inclusive[key] += frame.time
        for child in frame.children:
            walk(child, on_stack | {key}, key)

    walk(root, frozenset(), "")
    return own, inclusive


def run(jobs: int = 40, keep: Path | None = None, out_dir: Path = RESULTS) -> dict[str, Any]:
    from pyinstrument.renderers import ConsoleRenderer
    from pyinstrument.session import Session

    out_dir.mkdir(parents=True, exist_ok=True)
    with workspace("profile", keep) as (tmp, procs):
        pods = start_pods(procs, tmp, 1)
        session_path = tmp / "dispatcher.pyisession"
        stack = Stack(procs, tmp, pods.urls).start(dispatchers=0)
        stack.env["COMFYFLEET_DISPATCHER_PORT"] = "0"
        dispatcher = procs.spawn("dispatcher", [sys.executable, str(Path(__file__).with_name("profiled_dispatcher.py")),
                                                str(session_path)], stack.env)
        stack.dispatchers.append(dispatcher)
        stack.wait_ready()
        with httpx.Client(base_url=stack.api_url, timeout=60) as client:
            for _ in range(3):
                through_comfyfleet(client)
            os.kill(dispatcher.pid, signal.SIGUSR1)
            cpu0, threads0 = cpu_seconds(dispatcher.pid), thread_cpu(dispatcher.pid)
            started = time.monotonic()
            for _ in range(jobs):
                through_comfyfleet(client)
            wall = time.monotonic() - started
            os.kill(dispatcher.pid, signal.SIGUSR2)
            cpu = cpu_seconds(dispatcher.pid) - cpu0
            threads = {k: v - threads0.get(k, 0.0) for k, v in thread_cpu(dispatcher.pid).items()}
        wait_until(session_path.exists, "the profile session", procs, timeout=60)
        procs.stop_one(dispatcher, signal.SIGTERM, grace=30)
        if not session_path.exists():
            raise RuntimeError(f"pyinstrument wrote no session; see {dispatcher.log}")
        session = Session.load(str(session_path))
    text = ConsoleRenderer(unicode=False, color=False, show_all=False, short_mode=False).render(session)
    (out_dir / "profile-dispatcher.txt").write_text(
        f"# The dispatcher's event-loop thread under pyinstrument while {jobs} sequential weightless jobs ran\n"
        "# (after 3 warm-up jobs), one simulator; epoll.poll is the loop waiting (idle).\n"
        "# bench/dispatch_profile.py writes this.\n\n"
        + text)
    root = session.root_frame()
    own, inclusive = _aggregate(root) if root is not None else ({}, {})
    per_job = 1000 / jobs
    idle = ("epoll.poll", "select (")
    skip = ("select", "_run_once", "run_forever", "<module>", "run (", "_run_module", "run_module", "_run_code",
            "main (", "asyncio.run", "Runner.run", "base_events.py", "runners.py")
    top_own = sorted(((k, v * per_job) for k, v in own.items() if not any(s in k for s in idle)),
                     key=lambda kv: -kv[1])[:15]
    top_incl = sorted(((k, v * per_job) for k, v in inclusive.items() if not any(s in k for s in skip + idle)),
                      key=lambda kv: -kv[1])[:20]
    # Hot spots found in earlier profiles, tracked by name (inclusive ms per job): httpcore asks which async
    # library runs on every lock and event it makes, and without sniffio installed that is a failed import.
    watched = {w: sum(v for k, v in inclusive.items() if k.startswith(w + " ")) * per_job
               for w in ("current_async_library", "_find_and_load")}
    return {
        "jobs": jobs, "wall_s": wall, "watched_ms_per_job": watched, "dispatcher_cpu_ms_per_job": cpu / jobs * 1000,
        "thread_cpu_ms_per_job": {k: v / jobs * 1000 for k, v in sorted(threads.items(), key=lambda kv: -kv[1])
                                  if v > 0},
        "session_s": session.duration, "sampled_cpu_s": session.cpu_time,
        "top_own_ms_per_job": top_own, "top_inclusive_ms_per_job": top_incl,
        "text": str(out_dir / "profile-dispatcher.txt"),
    }


def report(r: dict[str, Any]) -> str:
    threads = ", ".join(f"{k} {v:.1f}" for k, v in r["thread_cpu_ms_per_job"].items())
    lines = [f"{r['jobs']} sequential jobs under pyinstrument: dispatcher CPU {r['dispatcher_cpu_ms_per_job']:.1f} "
             f"ms/job (profiled) by thread: {threads}; tree in {r['text']}",
             "  top own time (ms per job, event-loop thread):"]
    lines += [f"    {v:6.2f}  {k}" for k, v in r["top_own_ms_per_job"][:10]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--keep", type=Path)
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the text profile goes")
    args = parser.parse_args()
    r = run(args.jobs, args.keep, args.out)
    print(report(r))
    print(json.dumps({k: v for k, v in r.items()}, indent=1))


if __name__ == "__main__":
    main()
