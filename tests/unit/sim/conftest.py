from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from comfyfleet.sim.catalog import Models
from comfyfleet.sim.paths import DataDirs


@pytest.fixture
def dirs(tmp_path: Path) -> DataDirs:
    d = DataDirs(tmp_path / "data")
    d.prepare()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(d.input / "example.png")
    return d


@pytest.fixture
def models(dirs: DataDirs) -> Models:
    return Models(["sd_xl_base_1.0.safetensors", "v1-5.safetensors"], ["detail_tweaker_xl.safetensors"], dirs.input)
