"""The real ComfyUI 0.3.64 captures the simulator is compared with (see tests/captures/README.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CAPTURES = Path(__file__).resolve().parents[2] / "captures"


def capture(name: str) -> Any:
    """One capture file, parsed."""
    return json.loads((CAPTURES / name).read_text())
