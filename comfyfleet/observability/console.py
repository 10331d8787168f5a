"""`comfyfleet status` and `comfyfleet jobs`: the fleet and recent jobs for a person at a terminal.

Both read the public API (the same routes and token as any client). Rendering is pure: API bodies in,
lines out, colour only when asked (a terminal without NO_COLOR, or --color).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

import httpx

STATE_COLOURS = {
    "ready": "32", "succeeded": "32",  # green
    "busy": "36", "running": "36", "dispatched": "36",  # cyan
    "queued": "33",  # yellow
    "unhealthy": "31", "failed": "31",  # red
    "cancelled": "90",  # grey
}


class ConsoleError(RuntimeError):
    """The API could not be read (unreachable, refused the token, answered an error)."""


@dataclass(frozen=True)
class Style:
    colour: bool

    def state(self, text: str) -> str:
        code = STATE_COLOURS.get(text)
        return f"\x1b[{code}m{text}\x1b[0m" if self.colour and code else text

    def bold(self, text: str) -> str:
        return f"\x1b[1m{text}\x1b[0m" if self.colour else text

    def warn(self, text: str) -> str:
        return f"\x1b[33m{text}\x1b[0m" if self.colour else text


def wants_colour(stream: TextIO, flag: bool | None) -> bool:
    if flag is not None:
        return flag
    return stream.isatty() and "NO_COLOR" not in os.environ


def duration(seconds: float | None) -> str:
    """1.2s, 42s, 3m05s, 2h07m; '-' when unknown."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def table(rows: list[list[str]], style: Style, state_column: int | None = None) -> list[str]:
    """Left-aligned columns; the header row bold, the state column coloured (padding counts plain text)."""
    if not rows:
        return []
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for n, row in enumerate(rows):
        cells = []
        for i, cell in enumerate(row):
            pad = " " * (widths[i] - len(cell))
            text = style.bold(cell) if n == 0 else (style.state(cell) if i == state_column else cell)
            cells.append(text + pad)
        out.append("  ".join(cells).rstrip())
    return out


def render_status(workers: dict[str, Any], queue: dict[str, Any], style: Style) -> list[str]:
    """Pools with their endpoints by state and queue, then endpoints, then the queue per priority."""
    endpoints = workers["workers"]
    pools = sorted({w["pool"] for w in endpoints} | set(queue.get("byPool", {})))
    lines = [style.bold("Pools")]
    rows = [["POOL", "READY", "BUSY", "UNHEALTHY", "QUEUED", "OLDEST"]]
    for pool in pools:
        mine = [w for w in endpoints if w["pool"] == pool]
        count = {s: sum(1 for w in mine if w["state"] == s) for s in ("ready", "busy", "unhealthy")}
        queued = queue.get("byPool", {}).get(pool, 0)
        oldest = queue.get("oldestAgeSeconds", {}).get(pool, 0.0)
        rows.append([pool, str(count["ready"]), str(count["busy"]), str(count["unhealthy"]), str(queued),
                     duration(oldest) if queued else "-"])
    lines += table(rows, style)
    lines += ["", style.bold("Endpoints")]
    if endpoints:
        rows = [["ENDPOINT", "POOL", "STATE", "JOB", "LAST ERROR"]]
        for w in sorted(endpoints, key=lambda w: (w["pool"], w["id"])):
            rows.append([w["id"], w["pool"], w["state"], (w.get("currentJob") or "-")[:8],
                         (w.get("lastError") or "")[:60]])
        lines += table(rows, style, state_column=2)
    else:
        lines.append(style.warn("no ComfyUI endpoint is registered"))
    lines += ["", style.bold("Queue")]
    by_priority = queue.get("byPriority", {})
    waiting = "  ".join(f"p{p}:{n}" for p, n in sorted(by_priority.items(), key=lambda kv: -int(kv[0])) if n)
    lines.append(f"waiting {queue['waiting']} ({waiting or 'empty'})  running {queue['active']}  "
                 f"retrying {queue['retrying']}")
    lines.append(f"finished: {queue['completed']} succeeded, {queue['failed']} failed, {queue['cancelled']} cancelled")
    return lines


def _ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def job_times(job: dict[str, Any], now: datetime) -> tuple[float | None, float | None]:
    """(wait, run) in seconds: created to dispatched (or now, still queued), started to finished (or now)."""
    created, dispatched = _ts(job.get("createdAt")), _ts(job.get("dispatchedAt"))
    started, finished = _ts(job.get("startedAt")), _ts(job.get("finishedAt"))
    wait: float | None = None
    if created is not None:
        if dispatched is not None:
            wait = (dispatched - created).total_seconds()
        elif job["state"] == "queued":
            wait = (now - created).total_seconds()
    run: float | None = None
    if started is not None:
        run = ((finished or now) - started).total_seconds()
    return (max(wait, 0.0) if wait is not None else None), (max(run, 0.0) if run is not None else None)


def render_jobs(body: dict[str, Any], style: Style, now: datetime) -> list[str]:
    jobs = body["jobs"]
    if not jobs:
        return ["no jobs"]
    rows = [["JOB", "STATE", "PROGRESS", "POOL", "TEMPLATE", "AGE", "WAIT", "RUN", "TRIES", "ERROR"]]
    for job in jobs:
        wait, run = job_times(job, now)
        created = _ts(job.get("createdAt"))
        error = job.get("error") or {}
        rows.append([
            job["jobId"][:8], job["state"], f"{job['progress']['percent']}%", job.get("pool") or "any",
            job.get("template") or "custom", duration((now - created).total_seconds() if created else None),
            duration(wait), duration(run), str(job["attempts"]), error.get("code", ""),
        ])
    return table(rows, style, state_column=1)


class ApiReader:
    """GETs against the public API with the caller's token; every failure is a ConsoleError."""

    def __init__(self, api: str, token: str | None, timeout: float = 10.0):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=api.rstrip("/"), headers=headers, timeout=timeout)

    def get(self, path: str, **params: Any) -> dict[str, Any]:
        try:
            r = self.http.get(path, params={k: v for k, v in params.items() if v is not None})
        except httpx.HTTPError as exc:
            raise ConsoleError(f"cannot reach the API at {self.http.base_url}: {exc}") from None
        if r.status_code >= 400:
            try:
                message = r.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = r.text[:200]
            raise ConsoleError(f"GET {path}: HTTP {r.status_code}: {message}")
        body: dict[str, Any] = r.json()
        return body

    def close(self) -> None:
        self.http.close()


def status_lines(reader: ApiReader, style: Style) -> list[str]:
    return render_status(reader.get("/api/comfyui/workers"), reader.get("/api/queue/stats"), style)


def jobs_lines(reader: ApiReader, style: Style, limit: int, user: str | None) -> list[str]:
    return render_jobs(reader.get("/api/comfyui/jobs", limit=limit, user=user), style, datetime.now(UTC))


def show(lines: Callable[[], list[str]], out: TextIO, watch: float | None) -> None:
    """Print once, or (watch) redraw every `watch` seconds until Ctrl-C."""
    if watch is None:
        out.write("\n".join(lines()) + "\n")
        return
    try:
        while True:
            text = "\n".join(lines())
            stamp = datetime.now().strftime("%H:%M:%S")
            out.write(f"\x1b[H\x1b[2J{text}\n\n(every {watch:g}s, {stamp}; Ctrl-C stops)\n")
            out.flush()
            time.sleep(watch)
    except KeyboardInterrupt:
        out.write("\n")


def run(kind: str, api: str, token: str | None, *, watch: float | None, colour: bool | None, limit: int = 20,
        user: str | None = None) -> None:
    style = Style(wants_colour(sys.stdout, colour))
    reader = ApiReader(api, token)
    try:
        if kind == "status":
            show(lambda: status_lines(reader, style), sys.stdout, watch)
        else:
            show(lambda: jobs_lines(reader, style, limit, user), sys.stdout, watch)
    finally:
        reader.close()
