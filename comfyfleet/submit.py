"""`comfyfleet submit`: send a workflow to the API, follow its progress, download its outputs."""

from __future__ import annotations

import base64
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx


class SubmitError(RuntimeError):
    """The API refused the job or the job did not succeed."""


@dataclass
class SubmitOptions:
    api: str = "http://127.0.0.1:8000"
    token: str | None = None
    priority: int = 5
    wait: bool = True
    out_dir: Path = Path("outputs")
    timeout: float = 600.0
    quiet: bool = False


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """`k=v` pairs; values parse as JSON where they can (numbers, booleans), else stay strings."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SubmitError(f"--param takes key=value, got {pair!r}")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def build_body(workflow_path: Path | None, template: str | None, params: dict[str, Any], images: list[Path],
               priority: int) -> dict[str, Any]:
    body: dict[str, Any] = {"params": params, "priority": priority}
    if workflow_path is not None:
        body["workflow"] = json.loads(workflow_path.read_text())
    else:
        body["template"] = template
    if images:
        body["inputImages"] = {p.name: base64.b64encode(p.read_bytes()).decode() for p in images}
        if "image" not in params and len(images) == 1:
            params["image"] = images[0].name
    return body


class ProgressBar:
    """A redrawn bar on a terminal; one line per state change when stderr is a log or a pipe."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.last_state: str | None = None

    def show(self, job: dict[str, Any]) -> None:
        if self.quiet:
            return
        if not self.tty:
            if job["state"] != self.last_state:
                self.last_state = job["state"]
                sys.stderr.write(f"job {job['jobId']}: {job['state']}\n")
            return
        progress = job.get("progress", {})
        pct = int(progress.get("percent", 0))
        filled = pct * 30 // 100
        step = f" step {progress['value']}/{progress['max']}" if progress.get("max") else ""
        line = f"\r[{'#' * filled}{'.' * (30 - filled)}] {pct:3d}% {job['state']:<10}{step}"
        sys.stderr.write(line.ljust(70))
        sys.stderr.flush()

    def done(self) -> None:
        if not self.quiet and self.tty:
            sys.stderr.write("\n")


def submit(body: dict[str, Any], opts: SubmitOptions) -> tuple[dict[str, Any], list[Path]]:
    """Create the job; with wait, follow it to the end and download outputs. Returns (job, paths)."""
    headers = {"Authorization": f"Bearer {opts.token}"} if opts.token else {}
    with httpx.Client(base_url=opts.api, headers=headers, timeout=30) as client:
        r = client.post("/api/comfyui/generate", json=body)
        if r.status_code not in (200, 202):
            raise SubmitError(_describe_error(r))
        job = r.json()
        if not opts.wait:
            return job, []
        job = follow(client, job, opts)
        if job["state"] != "succeeded":
            err = job.get("error") or {}
            raise SubmitError(f"job {job['jobId']} {job['state']}: {err.get('message', 'no error message')}")
        return job, download(client, job, opts.out_dir)


def follow(client: httpx.Client, job: dict[str, Any], opts: SubmitOptions) -> dict[str, Any]:
    bar = ProgressBar(opts.quiet)
    url = f"/api/comfyui/job/{job['jobId']}/events"
    with client.stream("GET", url, timeout=httpx.Timeout(opts.timeout, connect=10)) as stream:
        if stream.status_code != 200:
            stream.read()
            raise SubmitError(_describe_error(stream))
        for line in stream.iter_lines():
            if line.startswith("data: "):
                job = json.loads(line[6:])
                bar.show(job)
                if job["state"] in ("succeeded", "failed", "cancelled"):
                    break
    bar.done()
    return job


def download(client: httpx.Client, job: dict[str, Any], out_dir: Path) -> list[Path]:
    target = out_dir / job["jobId"]
    target.mkdir(parents=True, exist_ok=True)
    paths = []
    for output in job["outputs"]:
        r = client.get(output["url"])
        if r.status_code != 200:
            raise SubmitError(_describe_error(r))
        path = target / output["filename"]
        path.write_bytes(r.content)
        paths.append(path.resolve())
    return paths


def _describe_error(r: httpx.Response) -> str:
    try:
        err = r.json()["error"]
        return f"HTTP {r.status_code} {err['code']}: {err['message']}"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {r.status_code}: {r.text[:500]}"
