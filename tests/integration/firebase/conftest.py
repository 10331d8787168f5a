"""Starts the Auth, Firestore and Storage emulators on free loopback ports (each once per session, only when a
test needs it) and stops them at the end. The Auth emulator takes ~40 s to start on 2 cores (firebase-tools
compiles its OpenAPI schema), so only the tests that need it start it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.firebase.emulators import (
    BUCKET,
    AuthEmulator,
    Emulators,
    FirestoreEmulator,
    GcsEmulator,
    TokenIssuer,
    emulator_node_modules,
)


@pytest.fixture(scope="session")
def node_modules() -> Path:
    try:
        return emulator_node_modules()
    except RuntimeError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"Firebase emulators unavailable here: {exc}")


@pytest.fixture(scope="session")
def firebase_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("firebase")


@pytest.fixture(scope="session")
def gcs_emulator(firebase_root: Path) -> Iterator[GcsEmulator]:
    server = GcsEmulator(firebase_root / "gcs")
    try:
        server.create_bucket(BUCKET)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def firestore_emulator(firebase_root: Path, node_modules: Path) -> Iterator[FirestoreEmulator]:
    server = FirestoreEmulator(firebase_root / "firestore", node_modules)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def auth_emulator(firebase_root: Path, node_modules: Path) -> Iterator[AuthEmulator]:
    server = AuthEmulator(firebase_root / "auth", node_modules)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def emulators(firestore_emulator: FirestoreEmulator, gcs_emulator: GcsEmulator,
              auth_emulator: AuthEmulator) -> Emulators:
    return Emulators(firestore=firestore_emulator, gcs=gcs_emulator, auth=auth_emulator)


def _setenv(monkeypatch: pytest.MonkeyPatch, emulators: Emulators) -> Emulators:
    """The emulator variables in this test process too, for in-process firebase-admin / Google clients."""
    for key, value in emulators.env().items():
        monkeypatch.setenv(key, value)
    return emulators


@pytest.fixture
def storage_env(gcs_emulator: GcsEmulator, monkeypatch: pytest.MonkeyPatch) -> Emulators:
    return _setenv(monkeypatch, Emulators(gcs=gcs_emulator))


@pytest.fixture
def firestore_env(firestore_emulator: FirestoreEmulator, monkeypatch: pytest.MonkeyPatch) -> Emulators:
    return _setenv(monkeypatch, Emulators(firestore=firestore_emulator))


@pytest.fixture
def emulator_env(emulators: Emulators, monkeypatch: pytest.MonkeyPatch) -> Emulators:
    return _setenv(monkeypatch, emulators)


@pytest.fixture(scope="session")
def token_issuer() -> Iterator[TokenIssuer]:
    issuer = TokenIssuer()
    yield issuer
    issuer.stop()
