"""Pick the output store from settings (local files by default; Firebase Storage or S3-compatible)."""

from __future__ import annotations

from comfyfleet.settings import CommonSettings
from comfyfleet.store.outputs import LocalOutputStore, OutputStore


def output_store(settings: CommonSettings) -> OutputStore:
    if settings.output_store == "firebase":
        from comfyfleet.store.firebase import FirebaseOutputStore  # optional dependency, imported only when used

        return FirebaseOutputStore.from_settings(settings)
    if settings.output_store == "s3":
        from comfyfleet.store.s3 import S3OutputStore  # optional dependency (comfyfleet[s3])

        return S3OutputStore.from_settings(settings)
    return LocalOutputStore(settings.data_dir)
