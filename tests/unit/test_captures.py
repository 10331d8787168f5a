"""The ComfyUI captures in tests/captures stay exactly as recorded from a real ComfyUI 0.3.64.

Client, simulator and validation tests compare against them, so an edited capture would quietly move
what "real ComfyUI" means. SHA256SUMS pins each file's digest, taken when they were copied from the
protocol notes; a deliberate re-recording updates both (`sha256sum *.json > SHA256SUMS` in tests/captures).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

CAPTURES = Path(__file__).resolve().parents[1] / "captures"
RECORDED_VERSION = "0.3.64"


def pinned_digests() -> dict[str, str]:
    digests = {}
    for line in (CAPTURES / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        digests[name.lstrip("*")] = digest
    return digests


def test_every_capture_is_pinned_and_unchanged() -> None:
    pinned = pinned_digests()
    present = sorted(p.name for p in CAPTURES.glob("*.json"))
    assert len(present) >= 30
    assert present == sorted(pinned), "a capture was added or removed without updating SHA256SUMS"
    for name in present:
        assert hashlib.sha256((CAPTURES / name).read_bytes()).hexdigest() == pinned[name], f"{name} was edited"


def test_captures_come_from_the_recorded_comfyui_version() -> None:
    stats = json.loads((CAPTURES / "get_system_stats.json").read_text())
    assert stats["body"]["system"]["comfyui_version"] == RECORDED_VERSION
