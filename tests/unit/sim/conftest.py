from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from comfyfleet.sim.catalog import Models
from comfyfleet.sim.paths import DataDirs

CAPTURES = Path(__file__).parent / "captures"


def capture(name: str) -> Any:
    return json.loads((CAPTURES / name).read_text())


@pytest.fixture
def dirs(tmp_path: Path) -> DataDirs:
    d = DataDirs(tmp_path / "data")
    d.prepare()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(d.input / "example.png")
    return d


@pytest.fixture
def models(dirs: DataDirs) -> Models:
    return Models(["sd_xl_base_1.0.safetensors", "v1-5.safetensors"], ["detail_tweaker_xl.safetensors"], dirs.input)
