"""Where job outputs live: a small storage protocol and the local-files default backend."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Protocol

from comfyfleet.jobs.model import InputFile, Job, OutputFile


class StorageError(Exception):
    """An output could not be stored or read back."""


class OutputStore(Protocol):
    """Stores a job's output files and says where clients fetch them."""

    def put(self, job: Job, node_id: str, filename: str, data: bytes, content_type: str) -> OutputFile: ...

    def put_input(self, job: Job, name: str, data: bytes) -> InputFile: ...

    def read(self, key: str) -> bytes: ...

    def delete_job(self, job: Job) -> None: ...


def safe_name(name: str) -> str:
    """A filename with no path parts, so outputs cannot escape their job folder."""
    base = os.path.basename(name.replace("\\", "/"))
    if base in {"", ".", ".."}:
        raise StorageError(f"invalid output filename {name!r}")
    return base


class LocalOutputStore:
    """Files under <data_dir>/outputs/<owner>/<job id>/, served back by the API."""

    def __init__(self, root: Path, url_prefix: str = "/api/comfyui/outputs"):
        self.root = Path(root) / "outputs"
        self.url_prefix = url_prefix.rstrip("/")

    def _write(self, key: str, data: bytes) -> None:
        path = self.root / key
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(path.suffix + ".part")
            tmp.write_bytes(data)
            tmp.replace(path)
        except OSError as exc:
            raise StorageError(f"cannot write {path}: {exc}") from exc

    def put(self, job: Job, node_id: str, filename: str, data: bytes, content_type: str) -> OutputFile:
        name = safe_name(filename)
        key = f"{safe_name(job.owner)}/{job.id}/{name}"
        self._write(key, data)
        return OutputFile(
            filename=name, node_id=node_id, content_type=content_type, size=len(data), key=key,
            url=f"{self.url_prefix}/{job.id}/{name}",
        )

    def put_input(self, job: Job, name: str, data: bytes) -> InputFile:
        key = f"{safe_name(job.owner)}/{job.id}/inputs/{safe_name(name)}"
        self._write(key, data)
        return InputFile(name=safe_name(name), key=key, size=len(data))

    def path_of(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise StorageError(f"key {key!r} escapes the store")
        return path

    def read(self, key: str) -> bytes:
        try:
            return self.path_of(key).read_bytes()
        except OSError as exc:
            raise StorageError(f"cannot read output {key!r}: {exc}") from exc

    def delete_job(self, job: Job) -> None:
        shutil.rmtree(self.root / safe_name(job.owner) / job.id, ignore_errors=True)
