"""Firestore clients on the shared firebase-admin app: a fresh one per mirror, one shared for reads."""

from __future__ import annotations

import threading
from typing import Any

from comfyfleet.settings import CommonSettings

# One commit or query must answer within this, or it counts as failed (the records stay queued in Redis).
RPC_TIMEOUT_SECONDS = 10.0


def firestore_client(settings: CommonSettings) -> Any:
    """A new Firestore client on the shared firebase-admin app (emulator-aware through FIRESTORE_EMULATOR_HOST)."""
    from google.cloud import firestore

    from comfyfleet.firebase_app import firebase_app

    app = firebase_app(settings)
    return firestore.Client(project=app.project_id, credentials=app.credential.get_credential())


_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


def shared_client(settings: CommonSettings) -> Any:
    """One Firestore client per configuration for the API's reads (clients are thread-safe)."""
    from comfyfleet.firebase_app import app_name

    key = app_name(settings)
    with _clients_lock:
        if key not in _clients:
            _clients[key] = firestore_client(settings)
        return _clients[key]


def short_error(exc: BaseException) -> str:
    """An exception as one log-sized line (gRPC errors can run to pages)."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 300 else text[:300] + "..."
