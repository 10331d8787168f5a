"""One firebase-admin App per process and configuration: credentials from a file, ADC, or anonymous for emulators."""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path
from typing import Any

from pydantic_settings import BaseSettings, SettingsConfigDict

from comfyfleet.settings import CommonSettings

log = logging.getLogger(__name__)

_lock = threading.Lock()


class FirebaseConfigError(Exception):
    """Firebase is switched on but not configured well enough to start."""


class EmulatorHosts(BaseSettings):
    """The Google SDKs' own emulator variables (no COMFYFLEET_ prefix): set only in tests and local runs."""

    model_config = SettingsConfigDict(extra="ignore")

    firebase_auth_emulator_host: str = ""
    firestore_emulator_host: str = ""
    # fake-gcs-server or the Firebase Storage emulator, with its scheme (http://127.0.0.1:4443).
    storage_emulator_host: str = ""

    @property
    def any(self) -> bool:
        return bool(self.firebase_auth_emulator_host or self.firestore_emulator_host or self.storage_emulator_host)


def _anonymous_credential() -> Any:
    """A firebase-admin credential that sends no token: what the emulators accept and all they need."""
    from firebase_admin import credentials
    from google.auth.credentials import AnonymousCredentials

    class AnonymousCredential(credentials.Base):  # type: ignore[misc]
        def get_credential(self) -> AnonymousCredentials:
            return AnonymousCredentials()  # type: ignore[no-untyped-call]  # google-auth leaves it untyped

    return AnonymousCredential()


def _credential(settings: CommonSettings, hosts: EmulatorHosts) -> Any:
    from firebase_admin import credentials

    path = settings.firebase_credentials_file
    if path is not None:
        if not Path(path).is_file():
            raise FirebaseConfigError(f"COMFYFLEET_FIREBASE_CREDENTIALS_FILE {path} is not a readable file")
        try:
            return credentials.Certificate(str(path))
        except (ValueError, OSError) as exc:
            # The message names the file, never its contents (it holds a private key).
            raise FirebaseConfigError(f"{path} is not a service-account key file: {type(exc).__name__}") from None
    if hosts.any:
        return _anonymous_credential()
    return credentials.ApplicationDefault()


def app_name(settings: CommonSettings) -> str:
    """Apps are cached by configuration, so a test process may hold two projects side by side."""
    key = f"{settings.firebase_project_id}|{settings.firebase_bucket}|{settings.firebase_credentials_file}"
    return "comfyfleet-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def firebase_app(settings: CommonSettings) -> Any:
    """The firebase-admin App for these settings, initialised once (thread-safe) and then reused."""
    import firebase_admin

    name = app_name(settings)
    with _lock:
        try:
            return firebase_admin.get_app(name)
        except ValueError:
            pass
        hosts = EmulatorHosts()
        if not settings.firebase_project_id and (hosts.any or settings.firebase_credentials_file is None):
            raise FirebaseConfigError("COMFYFLEET_FIREBASE_PROJECT_ID is required for Firebase auth, Firestore "
                                      "and Storage")
        options: dict[str, Any] = {}
        if settings.firebase_project_id:
            options["projectId"] = settings.firebase_project_id
        if settings.firebase_bucket:
            options["storageBucket"] = settings.firebase_bucket
        credential = _credential(settings, hosts)
        if hosts.any:
            log.info("firebase: emulator mode (auth=%s firestore=%s storage=%s), anonymous credentials",
                     hosts.firebase_auth_emulator_host or "-", hosts.firestore_emulator_host or "-",
                     hosts.storage_emulator_host or "-")
        return firebase_admin.initialize_app(credential, options, name=name)


def can_sign(app: Any) -> bool:
    """Whether the app's credentials hold a private key, so Storage URLs can be signed locally (V4)."""
    from google.auth.credentials import Signing

    try:
        return isinstance(app.credential.get_credential(), Signing)
    except Exception as exc:  # noqa: BLE001 - ADC lookups raise several types; any of them means "cannot sign"
        log.info("firebase: credentials cannot sign URLs (%s); using download tokens", type(exc).__name__)
        return False
