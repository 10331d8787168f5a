"""The simulated pod's folders (output/, input/, temp/) and ComfyUI's file naming rules."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

FOLDER_TYPES = ("output", "input", "temp")


@dataclass(frozen=True)
class DataDirs:
    """output/, input/ and temp/ below one root, like a ComfyUI install."""

    root: Path

    @property
    def output(self) -> Path:
        return self.root / "output"

    @property
    def input(self) -> Path:
        return self.root / "input"

    @property
    def temp(self) -> Path:
        return self.root / "temp"

    def by_type(self, kind: str | None) -> Path | None:
        """The folder for a `type` query value, or None for an unknown type."""
        return {"output": self.output, "input": self.input, "temp": self.temp}.get(kind or "")

    def prepare(self) -> None:
        """Create the folders; wipe temp/ as ComfyUI does at start."""
        shutil.rmtree(self.temp, ignore_errors=True)
        for folder in (self.output, self.input, self.temp):
            folder.mkdir(parents=True, exist_ok=True)


def annotated_filepath(name: str, dirs: DataDirs) -> tuple[str, Path | None]:
    """Strip a trailing ` [output]`/` [input]`/` [temp]` annotation and name the folder it selects."""
    # ComfyUI cuts one character more than the annotation, the space in "name.png [output]".
    for kind in FOLDER_TYPES:
        suffix = f"[{kind}]"
        if name.endswith(suffix):
            return name[: -len(suffix) - 1], dirs.by_type(kind)
    return name, None


def input_file_path(name: str, dirs: DataDirs) -> Path:
    """Where LoadImage reads `name` from (input/ unless annotated)."""
    name, base = annotated_filepath(name, dirs)
    return (base or dirs.input) / name


def save_image_path(prefix: str, output_dir: Path, width: int = 0, height: int = 0) -> tuple[Path, str, int, str]:
    """ComfyUI's folder_paths.get_save_image_path: (folder, file stem, next counter, subfolder).

    The counter continues after the highest `<stem>_<NNNNN>_` already in the folder.
    Raises Exception (as ComfyUI does) when the prefix escapes the output folder.
    """
    if "%" in prefix:
        prefix = _compute_vars(prefix, width, height)
    subfolder = os.path.dirname(os.path.normpath(prefix))
    stem = os.path.basename(os.path.normpath(prefix))
    out = str(output_dir)
    folder = os.path.join(out, subfolder)
    if os.path.commonpath((out, os.path.abspath(folder))) != out:
        # A bare Exception, as in ComfyUI: clients see "Exception" as the exception_type.
        raise Exception(
            "**** ERROR: Saving image outside the output folder is not allowed."
            f"\n full_output_folder: {os.path.abspath(folder)}\n         output_dir: {out}"
        )
    # Same result as ComfyUI's max(filter(map(...))) over os.listdir, without building tuples per file.
    prefix_len = len(os.path.basename(prefix))
    wanted = os.path.normcase(stem)
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        os.makedirs(folder, exist_ok=True)
        names = []
    highest = 0
    for name in names:
        head = name[: prefix_len + 1]
        if head[-1:] != "_" or os.path.normcase(head[:-1]) != wanted:
            continue
        try:
            highest = max(highest, int(name[prefix_len + 1 :].split("_")[0]))
        except ValueError:
            pass
    counter = highest + 1
    return Path(folder), stem, counter, subfolder


def _compute_vars(text: str, width: int, height: int) -> str:
    now = time.localtime()
    for key, value in {
        "%width%": str(width),
        "%height%": str(height),
        "%year%": str(now.tm_year),
        "%month%": str(now.tm_mon).zfill(2),
        "%day%": str(now.tm_mday).zfill(2),
        "%hour%": str(now.tm_hour).zfill(2),
        "%minute%": str(now.tm_min).zfill(2),
        "%second%": str(now.tm_sec).zfill(2),
    }.items():
        text = text.replace(key, value)
    return text


class UploadRejected(Exception):
    """The upload asks for a path outside its folder (HTTP 400)."""


def upload_target(base: Path, subfolder: str, filename: str, data: bytes, overwrite: bool) -> tuple[Path, str, bool]:
    """Pick where an uploaded file goes, as ComfyUI's image_upload does.

    Returns (path, final name, already_there). Same name and same bytes reuse the file; same name and
    different bytes become `name (1).ext`, `name (2).ext`, … unless overwrite is set.
    """
    base_str = os.path.abspath(base)
    folder = os.path.join(base_str, os.path.normpath(subfolder))
    path = os.path.abspath(os.path.join(folder, filename))
    if os.path.commonpath((base_str, path)) != base_str:
        raise UploadRejected(path)
    os.makedirs(folder, exist_ok=True)
    if overwrite:
        return Path(path), filename, False
    stem, ext = os.path.splitext(filename)
    digest = hashlib.sha256(data).hexdigest()
    i = 1
    while os.path.exists(path):
        if _file_sha256(path) == digest:
            return Path(path), filename, True
        filename = f"{stem} ({i}){ext}"
        path = os.path.join(folder, filename)
        i += 1
    return Path(path), filename, False


def _file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()
