"""GPU-seconds from a pod's own history timestamps (pure)."""

import json
from pathlib import Path

import pytest

from comfyfleet.comfy.models import parse_history
from comfyfleet.usage import day_of, execution_window, gpu_seconds

CAPTURES = Path(__file__).resolve().parents[1] / "captures"


def test_gpu_seconds_from_a_captured_comfyui_history():
    body = json.loads((CAPTURES / "get_history_basic.json").read_text())["body"]
    [prompt_id] = body
    entry = parse_history(prompt_id, body)
    assert entry is not None
    assert gpu_seconds(entry.messages) == pytest.approx(0.012)


@pytest.mark.parametrize(("messages", "window"), [
    ([("execution_start", {"timestamp": 1000}), ("execution_success", {"timestamp": 4500})], (1.0, 4.5)),
    ([("execution_start", {"timestamp": 1000}), ("execution_error", {"timestamp": 3000})], (1.0, 3.0)),
    ([("execution_start", {"timestamp": 1000}), ("execution_interrupted", {"timestamp": 2000})], (1.0, 2.0)),
    ([("execution_start", {"timestamp": 1000})], None),  # never ended
    ([("execution_success", {"timestamp": 1000})], None),  # never started (e.g. all cached elsewhere)
    ([("execution_start", {"timestamp": "x"}), ("execution_success", {"timestamp": 9})], None),
    ([("execution_start", {"timestamp": 5000}), ("execution_success", {"timestamp": 4000})], (5.0, 5.0)),
])
def test_execution_window(messages, window):
    assert execution_window(messages) == window


def test_day_is_utc():
    assert day_of(1_796_169_599.0) == "2026-12-01" and day_of(1_796_169_600.0) == "2026-12-02"
