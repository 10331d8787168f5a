"""The repository's copy of the ComfyUI captures must stay byte-identical to the protocol notes' originals."""

from pathlib import Path

import pytest

COPY = Path(__file__).resolve().parents[1] / "captures"
ORIGINALS = Path(__file__).resolve().parents[3] / "shared" / "comfyui-protocol" / "captures"


@pytest.mark.skipif(not ORIGINALS.is_dir(), reason="the protocol notes (../shared) are not beside this checkout")
def test_copied_captures_match_the_originals():
    copies = sorted(p for p in COPY.glob("*.json"))
    assert len(copies) >= 30
    for copy in copies:
        assert copy.read_bytes() == (ORIGINALS / copy.name).read_bytes(), copy.name
