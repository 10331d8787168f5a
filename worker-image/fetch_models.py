#!/usr/bin/env python3
"""Fetch the models and LoRAs a ComfyUIWorker lists into the model cache, verifying sha256.

Reads two JSON lists from the environment (the operator fills them from the ComfyUIWorker spec):
  COMFYFLEET_MODELS  [{"name": "sd_xl_base_1.0.safetensors", "url": "https://...",
                       "sha256": "31e3...", "folder": "checkpoints"}, ...]   folder default: checkpoints
  COMFYFLEET_LORAS   same shape, folder default: loras
Files land in $COMFYFLEET_MODEL_CACHE/<folder>/<name> (a volume shared across restarts, and across
pods when it is ReadWriteMany); ComfyUI finds them through extra_model_paths.yaml.

A cached file is reused when its recorded digest matches; a download is written next to its
destination, hashed while streaming, and renamed into place only when the digest matches, so a
crash or a bad mirror never leaves a half or wrong file under the real name. A per-file lock keeps
pods that share the cache from downloading the same file twice. Standard library only: the image
runs this before ComfyUI's own environment matters.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("comfyfleet.fetch")

# 8 MiB reads keep hashing and writing efficient on multi-GB checkpoints without much memory.
CHUNK = 8 * 1024 * 1024
# Three tries with 2 s, 4 s backoff ride out a flaky CDN without delaying a broken URL for long.
ATTEMPTS = 3
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
SAFE_FOLDER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
# Hosts that get $HF_TOKEN as a bearer token (gated Hugging Face repositories).
HF_HOSTS = {"huggingface.co", "hf.co"}


class FetchError(Exception):
    """A model could not be fetched or verified."""


@dataclass(frozen=True)
class ModelFile:
    name: str
    url: str
    folder: str
    sha256: str | None = None


def parse_list(raw: str | None, default_folder: str, variable: str) -> list[ModelFile]:
    """Parse one env JSON list into validated ModelFile entries."""
    if not raw or not raw.strip():
        return []
    try:
        items = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise FetchError(f"{variable} is not valid JSON: {exc}") from exc
    if not isinstance(items, list):
        raise FetchError(f"{variable} must be a JSON list of {{name, url, sha256, folder}}")
    files = []
    for i, item in enumerate(items):
        where = f"{variable}[{i}]"
        if not isinstance(item, dict) or not item.get("name") or not item.get("url"):
            raise FetchError(f"{where} needs at least name and url")
        name, url = str(item["name"]), str(item["url"])
        folder = str(item.get("folder") or default_folder)
        digest = str(item["sha256"]).lower() if item.get("sha256") else None
        if not SAFE_NAME.match(name) or name in {".", ".."}:
            raise FetchError(f"{where}.name {name!r} must be a plain file name")
        if not SAFE_FOLDER.match(folder) or ".." in folder.split("/"):
            raise FetchError(f"{where}.folder {folder!r} must be a relative folder like checkpoints or loras")
        if urllib.parse.urlparse(url).scheme not in {"https", "http", "file"}:
            raise FetchError(f"{where}.url {url!r} must be https://, http:// or file://")
        if digest is not None and not SHA256.match(digest):
            raise FetchError(f"{where}.sha256 must be 64 hex digits")
        files.append(ModelFile(name=name, url=url, folder=folder, sha256=digest))
    return files


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _sidecar(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.sha256")


def _fingerprint(path: Path) -> str:
    """Size and modification time: a file rewritten since it was verified no longer matches."""
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def _record(dest: Path, digest: str) -> None:
    _sidecar(dest).write_text(f"{digest} {_fingerprint(dest)}\n")


def cached(dest: Path, want: str | None) -> bool:
    """Whether dest already holds the wanted file (by its verified record, else by hashing it)."""
    if not dest.is_file():
        return False
    if want is None:
        return True
    record = _sidecar(dest)
    if record.is_file():
        # Trusting the record spares hashing multi-GB checkpoints on every pod start.
        digest, _, fingerprint = record.read_text().strip().partition(" ")
        if digest == want and fingerprint == _fingerprint(dest):
            return True
    actual = file_sha256(dest)
    if actual == want:
        _record(dest, actual)
        return True
    log.warning("cached %s has sha256 %s, want %s: fetching again", dest, actual, want)
    return False


def token_allowed(url: str) -> bool:
    """$HF_TOKEN goes only to Hugging Face itself over https, never to a CDN or mirror it redirects to."""
    parts = urllib.parse.urlparse(url)
    return parts.scheme == "https" and parts.hostname in HF_HOSTS


def _request(url: str) -> urllib.request.Request:
    headers = {"User-Agent": "comfyfleet-worker-fetch/1"}
    token = os.environ.get("HF_TOKEN")
    if token and token_allowed(url):
        headers["Authorization"] = f"Bearer {token}"
    return urllib.request.Request(url, headers=headers)


class TokenSafeRedirects(urllib.request.HTTPRedirectHandler):
    """urllib copies every header onto the redirected request; drop the token when the target is not HF."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and not token_allowed(newurl):
            new.remove_header("Authorization")
        return new


_OPENER = urllib.request.build_opener(TokenSafeRedirects)


def download(item: ModelFile, dest: Path) -> str:
    """Stream item.url into dest (atomically), returning the sha256 of what was written."""
    partial = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    digest = hashlib.sha256()
    try:
        with _OPENER.open(_request(item.url), timeout=60) as response, partial.open("wb") as out:
            while chunk := response.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
        actual = digest.hexdigest()
        if item.sha256 is not None and actual != item.sha256:
            raise FetchError(f"{item.name}: sha256 mismatch: got {actual}, want {item.sha256} (from {item.url})")
        os.replace(partial, dest)
        _record(dest, actual)
        return actual
    finally:
        partial.unlink(missing_ok=True)


def fetch(item: ModelFile, cache: Path, require_sha256: bool = False) -> Path:
    """Make cache/<folder>/<name> hold the verified file; download it if needed."""
    if item.sha256 is None and require_sha256:
        raise FetchError(f"{item.name}: no sha256 given and COMFYFLEET_REQUIRE_SHA256 is set")
    folder = cache / item.folder
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / item.name
    with (folder / f".{item.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another pod on a shared cache may be fetching it
        if cached(dest, item.sha256):
            log.info("cached: %s", dest)
            return dest
        for attempt in range(1, ATTEMPTS + 1):
            started = time.monotonic()
            try:
                actual = download(item, dest)
            except FetchError:
                raise  # a wrong digest will not change on retry
            except OSError as exc:
                if attempt == ATTEMPTS:
                    raise FetchError(f"{item.name}: download from {item.url} failed {ATTEMPTS} times: {exc}") from exc
                log.warning("%s: attempt %d failed (%s); retrying", item.name, attempt, exc)
                time.sleep(2**attempt)
                continue
            size = dest.stat().st_size
            log.info("fetched %s (%d bytes, %.1fs)", dest, size, time.monotonic() - started)
            if item.sha256 is None:
                log.warning("%s has no sha256 in the spec; pin it with sha256: %s", item.name, actual)
            return dest
    raise AssertionError("unreachable")


def main() -> int:
    logging.basicConfig(
        level=os.environ.get("COMFYFLEET_LOG_LEVEL", "INFO"), format="%(levelname)s %(name)s: %(message)s"
    )
    cache = Path(os.environ.get("COMFYFLEET_MODEL_CACHE", "/models"))
    require = os.environ.get("COMFYFLEET_REQUIRE_SHA256", "").lower() in {"1", "true", "yes"}
    try:
        files = parse_list(os.environ.get("COMFYFLEET_MODELS"), "checkpoints", "COMFYFLEET_MODELS")
        files += parse_list(os.environ.get("COMFYFLEET_LORAS"), "loras", "COMFYFLEET_LORAS")
        for item in files:
            fetch(item, cache, require_sha256=require)
    except FetchError as exc:
        log.error("%s", exc)
        return 1
    log.info("%d model file(s) ready in %s", len(files), cache)
    return 0


if __name__ == "__main__":
    sys.exit(main())
