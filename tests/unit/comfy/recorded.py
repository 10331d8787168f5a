"""Raw captures of a real ComfyUI 0.3.64, copied from the protocol notes into tests/captures/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CAPTURES = Path(__file__).resolve().parents[2] / "captures"


def load_capture(name: str) -> Any:
    return json.loads((CAPTURES / name).read_text())


def ws_frames(obj: Any) -> list[dict[str, Any]]:
    """Every recorded websocket frame ({"kind", "json", "t_ms"}) anywhere inside a capture."""
    if isinstance(obj, dict):
        if obj.get("kind") in ("text", "binary") and "t_ms" in obj:
            return [obj]
        return [f for value in obj.values() for f in ws_frames(value)]
    if isinstance(obj, list):
        return [f for value in obj for f in ws_frames(value)]
    return []
