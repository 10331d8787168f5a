"""File naming: SaveImage counters, upload dedupe/rename/overwrite, annotated names."""

from __future__ import annotations

from pathlib import Path

import pytest

from comfyfleet.sim.paths import DataDirs, UploadRejected, annotated_filepath, save_image_path, upload_target


def test_counter_starts_at_one_and_creates_the_subfolder(tmp_path: Path) -> None:
    folder, stem, counter, subfolder = save_image_path("probe/basic", tmp_path)
    assert (folder, stem, counter, subfolder) == (tmp_path / "probe", "basic", 1, "probe")
    assert folder.is_dir()


def test_counter_continues_from_files_on_disk(tmp_path: Path) -> None:
    for name in ("basic_00001_.png", "basic_00007_.png", "basic_00003_.png", "basic2_00050_.png", "other.png"):
        (tmp_path / name).write_bytes(b"")
    assert save_image_path("basic", tmp_path)[2] == 8
    assert save_image_path("basic2", tmp_path)[2] == 51
    assert save_image_path("new", tmp_path)[2] == 1


def test_prefix_may_not_leave_the_output_folder(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="Saving image outside the output folder is not allowed"):
        save_image_path("../escape", tmp_path / "out")


def test_prefix_size_variables(tmp_path: Path) -> None:
    assert save_image_path("img_%width%x%height%", tmp_path, 640, 480)[1] == "img_640x480"


def test_same_name_same_bytes_is_reused(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"one")
    path, name, duplicate = upload_target(tmp_path, "", "a.png", b"one", overwrite=False)
    assert (path, name, duplicate) == (tmp_path / "a.png", "a.png", True)


def test_same_name_other_bytes_is_renamed(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"one")
    (tmp_path / "a (1).png").write_bytes(b"two")
    assert upload_target(tmp_path, "", "a.png", b"three", overwrite=False)[1:] == ("a (2).png", False)
    assert upload_target(tmp_path, "", "a.png", b"two", overwrite=False)[1:] == ("a (1).png", True)


def test_overwrite_keeps_the_name(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"one")
    assert upload_target(tmp_path, "", "a.png", b"two", overwrite=True)[1:] == ("a.png", False)


def test_subfolder_upload_and_escape(tmp_path: Path) -> None:
    path, name, _ = upload_target(tmp_path, "sub/deeper", "a.png", b"x", overwrite=False)
    assert path == tmp_path / "sub" / "deeper" / "a.png" and path.parent.is_dir()
    with pytest.raises(UploadRejected):
        upload_target(tmp_path, "../..", "a.png", b"x", overwrite=False)


def test_annotated_names(tmp_path: Path) -> None:
    dirs = DataDirs(tmp_path)
    assert annotated_filepath("x.png [output]", dirs) == ("x.png", dirs.output)
    assert annotated_filepath("x.png [temp]", dirs) == ("x.png", dirs.temp)
    assert annotated_filepath("x.png", dirs) == ("x.png", None)
