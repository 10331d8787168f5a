"""`comfyfleet submit`: send a workflow to the API, follow its progress, download its outputs.

Built on comfyfleet.client. It does not trust the server's answers with the local disk: job ids and output
file names are checked before they become paths, and every file lands inside --out. The bearer token goes only
to the API's own origin (an absolute output URL elsewhere, e.g. a presigned S3 link, is fetched without it).
"""

from __future__ import annotations

import base64
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfyfleet.api.schemas import JobPublic
from comfyfleet.client import Client, ComfyfleetError, JobTimeout

# Job ids are UUIDs; anything else from the server is refused rather than turned into a folder name.
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_UNSAFE_CHARS = re.compile(r"[\x00-\x1f\x7f/\\:]")


class SubmitError(RuntimeError):
    """The API refused the job, the job did not succeed, or an answer was not safe to act on."""


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


def build_body(workflow_path: Path | None, template: str | None, params: dict[str, Any], images: list[Path | str],
               priority: int, *, webhook: str | None = None, output_format: str | None = None,
               quality: int | None = None) -> dict[str, Any]:
    """The request body; an image given as an https:// URL is sent as a URL (the server fetches it)."""
    body: dict[str, Any] = {"params": params, "priority": priority}
    if workflow_path is not None:
        body["workflow"] = json.loads(workflow_path.read_text())
    else:
        body["template"] = template
    if images:
        encoded: dict[str, str] = {}
        for image in images:
            text = str(image)
            if text.startswith(("https://", "http://")):
                name = safe_filename(text.split("?")[0].rstrip("/").rsplit("/", 1)[-1] or "image.png")
                encoded[name] = text
            else:
                path = Path(image)
                encoded[path.name] = base64.b64encode(path.read_bytes()).decode()
        body["inputImages"] = encoded
        if "image" not in params and len(encoded) == 1:
            params["image"] = next(iter(encoded))
    if webhook:
        body["webhook"] = {"url": webhook}
    if output_format or quality:
        body["output"] = {k: v for k, v in (("format", output_format), ("quality", quality)) if v is not None}
    return body


def safe_job_id(job_id: str) -> str:
    if not _JOB_ID.match(job_id):
        raise SubmitError(f"the server answered with an unusable job id {job_id[:80]!r}")
    return job_id


def safe_filename(name: str) -> str:
    """A server-given file name reduced to a plain name: no folders, no control characters, no dot-names."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = _UNSAFE_CHARS.sub("_", base).strip().lstrip(".")
    if not base:
        raise SubmitError(f"the server answered with an unusable file name {name[:80]!r}")
    return base[:200]


def output_path(out_dir: Path, job_id: str, filename: str, taken: set[Path]) -> Path:
    """Where an output goes: out_dir/<job id>/<name>, never outside out_dir, never over an earlier output."""
    root = out_dir.resolve()
    folder = (root / safe_job_id(job_id)).resolve()
    name = safe_filename(filename)
    path = (folder / name).resolve()
    stem, dot, suffix = name.rpartition(".")
    n = 1
    while path in taken:
        n += 1
        path = (folder / (f"{stem}-{n}.{suffix}" if dot else f"{name}-{n}")).resolve()
    if root not in path.parents:
        raise SubmitError(f"refusing to write {filename!r} outside {out_dir}")
    return path


class ProgressBar:
    """A redrawn bar on a terminal; one line per state change when stderr is a log or a pipe."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.last_state: str | None = None

    def show(self, job: JobPublic) -> None:
        if self.quiet:
            return
        state = job.state.value
        if not self.tty:
            if state != self.last_state:
                self.last_state = state
                sys.stderr.write(f"job {job.job_id}: {state}\n")
            return
        pct = job.progress.percent
        filled = pct * 30 // 100
        step = f" step {job.progress.value}/{job.progress.max}" if job.progress.max else ""
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {pct:3d}% {state:<10}{step}".ljust(70))
        sys.stderr.flush()

    def done(self) -> None:
        if not self.quiet and self.tty:
            sys.stderr.write("\n")


def submit(body: dict[str, Any], opts: SubmitOptions) -> tuple[dict[str, Any], list[Path]]:
    """Create the job; with wait, follow it to the end and download outputs. Returns (job as JSON, paths)."""
    try:
        with Client(opts.api, opts.token) as client:
            job = client.submit(body)
            safe_job_id(job.job_id)
            if not opts.wait:
                return _json(job), []
            job = follow(client, job, opts)
            if job.state.value != "succeeded":
                message = job.error.message if job.error else "no error message"
                raise SubmitError(f"job {job.job_id} {job.state.value}: {message}")
            return _json(job), download(client, job, opts.out_dir)
    except JobTimeout as exc:
        raise SubmitError(f"job {exc.job_id} did not finish within {opts.timeout:g} s") from None
    except ComfyfleetError as exc:
        raise SubmitError(str(exc)) from None


def follow(client: Client, job: JobPublic, opts: SubmitOptions) -> JobPublic:
    bar = ProgressBar(opts.quiet)
    try:
        for event in client.events(job.job_id, timeout=opts.timeout):
            job = event.job
            bar.show(job)
    finally:
        bar.done()
    if job.state.value not in ("succeeded", "failed", "cancelled"):
        raise JobTimeout(job.job_id, "the event stream ended early")
    return job


def download(client: Client, job: JobPublic, out_dir: Path) -> list[Path]:
    paths: list[Path] = []
    taken: set[Path] = set()
    for output in job.outputs:
        path = output_path(out_dir, job.job_id, output.filename, taken)
        taken.add(path)
        data = client.download(output)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        paths.append(path)
    return paths


def _json(job: JobPublic) -> dict[str, Any]:
    return job.model_dump(mode="json", by_alias=True)
