"""Pick the output store from settings (local files by default)."""

from __future__ import annotations

from comfyfleet.settings import CommonSettings
from comfyfleet.store.outputs import LocalOutputStore, OutputStore


def output_store(settings: CommonSettings) -> OutputStore:
    return LocalOutputStore(settings.data_dir)
