"""Outputs in Firebase Storage (a Google Cloud Storage bucket): `generations/{uid}/{jobId}/{file}`.

Each output is first written to a local spool file, then uploaded with `ifGenerationMatch=0` (an object is
never silently replaced), retried with backoff, and the spool file is removed only once the upload succeeded;
after the last failed attempt the store raises StorageError and the spool file stays for recovery.

Download URLs (OutputFile.url):
- credentials that hold a private key (a service-account key file, COMFYFLEET_FIREBASE_CREDENTIALS_FILE): a V4
  signed URL valid for `storage_url_expiry_seconds` (7 days at most, the V4 limit);
- any other credentials (Workload Identity / ADC, or the emulators): a Firebase download-token URL, the kind
  the Firebase SDKs' getDownloadURL() returns; it does not expire and is revoked by changing the object's
  `firebaseStorageDownloadTokens` metadata.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import shutil
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from comfyfleet.jobs.model import InputFile, Job, OutputFile
from comfyfleet.jobs.workflow import SAMPLERS, workflow_hash
from comfyfleet.settings import CommonSettings
from comfyfleet.store.outputs import StorageError, safe_name

log = logging.getLogger(__name__)

PREFIX = "generations"
FIREBASE_DOWNLOAD_BASE = "https://firebasestorage.googleapis.com/v0"
TOKEN_METADATA_KEY = "firebaseStorageDownloadTokens"
# Three attempts with 0.5 s, 1 s backoff ride out a dropped connection or a 503 burst; a longer outage
# should fail the job visibly (the spool file stays) rather than hold a GPU pod's lease.
UPLOAD_ATTEMPTS = 3
UPLOAD_BACKOFF_SECONDS = 0.5
# Per-request timeout: a 20 MiB PNG at a modest 5 MiB/s takes 4 s; 60 s leaves room for a slow link.
REQUEST_TIMEOUT_SECONDS = 60.0


# ---- pure parts: names, metadata, URLs ----

def object_name(owner: str, job_id: str, filename: str) -> str:
    return f"{PREFIX}/{safe_name(owner)}/{safe_name(job_id)}/{safe_name(filename)}"


def input_object_name(owner: str, job_id: str, name: str) -> str:
    return f"{PREFIX}/{safe_name(owner)}/{safe_name(job_id)}/inputs/{safe_name(name)}"


def job_prefix(job: Job) -> str:
    return f"{PREFIX}/{safe_name(job.owner)}/{safe_name(job.id)}/"


def job_seed(job: Job) -> int | None:
    """The seed the job ran with: its params, else the first sampler node's seed input."""
    seed = job.params.get("seed")
    if isinstance(seed, int):
        return seed
    for node_id in sorted(job.workflow, key=str):
        node = job.workflow[node_id]
        if not isinstance(node, dict):
            continue
        field = SAMPLERS.get(str(node.get("class_type")))
        value = (node.get("inputs") or {}).get(field) if field else None
        if isinstance(value, int):
            return value
    return None


def object_metadata(job: Job, node_id: str | None = None) -> dict[str, str]:
    """Custom metadata on every object (GCS metadata values are strings)."""
    meta = {"jobId": job.id, "owner": job.owner, "workflowHash": workflow_hash(job.workflow)}
    seed = job_seed(job)
    if seed is not None:
        meta["seed"] = str(seed)
    if node_id is not None:
        meta["nodeId"] = node_id
    return meta


def token_download_url(base: str, bucket: str, name: str, token: str) -> str:
    """A Firebase download-token URL: the object name is one path segment, its slashes escaped."""
    return f"{base.rstrip('/')}/b/{bucket}/o/{quote(name, safe='')}?alt=media&token={token}"


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


# ---- the store ----

class FirebaseOutputStore:
    """Stores outputs and inputs in a bucket; see the module docstring for the URL kinds."""

    def __init__(self, bucket: Any, spool_dir: Path, *, sign_urls: bool, url_expiry_seconds: int,
                 download_base: str = FIREBASE_DOWNLOAD_BASE, attempts: int = UPLOAD_ATTEMPTS,
                 backoff_seconds: float = UPLOAD_BACKOFF_SECONDS):
        self.bucket = bucket
        self.spool_dir = Path(spool_dir)
        self.sign_urls = sign_urls
        self.url_expiry = timedelta(seconds=url_expiry_seconds)
        self.download_base = download_base
        self.attempts = max(1, attempts)
        self.backoff = backoff_seconds

    @classmethod
    def from_settings(cls, settings: CommonSettings) -> FirebaseOutputStore:
        from firebase_admin import storage

        from comfyfleet.firebase_app import EmulatorHosts, FirebaseConfigError, can_sign, firebase_app

        if not settings.firebase_bucket:
            raise FirebaseConfigError("COMFYFLEET_OUTPUT_STORE=firebase needs COMFYFLEET_FIREBASE_BUCKET")
        app = firebase_app(settings)
        emulator = EmulatorHosts().storage_emulator_host
        base = f"{emulator.rstrip('/')}/storage/v1" if emulator else FIREBASE_DOWNLOAD_BASE
        return cls(storage.bucket(settings.firebase_bucket, app=app), Path(settings.data_dir) / "spool",
                   sign_urls=can_sign(app) and not emulator, url_expiry_seconds=settings.storage_url_expiry_seconds,
                   download_base=base)

    def put(self, job: Job, node_id: str, filename: str, data: bytes, content_type: str) -> OutputFile:
        name = object_name(job.owner, job.id, filename)
        blob = self._store(name, data, content_type, object_metadata(job, node_id))
        return OutputFile(filename=safe_name(filename), node_id=node_id, content_type=content_type, size=len(data),
                          key=name, url=self.url_of(blob))

    def put_input(self, job: Job, name: str, data: bytes) -> InputFile:
        key = input_object_name(job.owner, job.id, name)
        self._store(key, data, "application/octet-stream", object_metadata(job))
        return InputFile(name=safe_name(name), key=key, size=len(data))

    def read(self, key: str) -> bytes:
        from google.api_core import exceptions as gexc
        from google.cloud.storage.retry import DEFAULT_RETRY

        try:
            data: bytes = self.bucket.blob(key).download_as_bytes(
                timeout=REQUEST_TIMEOUT_SECONDS, retry=DEFAULT_RETRY.with_timeout(REQUEST_TIMEOUT_SECONDS))
            return data
        except gexc.NotFound:
            raise StorageError(f"no object {key!r} in bucket {self.bucket.name}") from None
        except Exception as exc:  # noqa: BLE001 - google-cloud-storage raises API and transport errors alike
            raise StorageError(f"cannot read {key!r} from bucket {self.bucket.name}: {_short(exc)}") from exc

    def delete_job(self, job: Job) -> None:
        from google.api_core import exceptions as gexc

        for blob in self.bucket.client.list_blobs(self.bucket, prefix=job_prefix(job), timeout=REQUEST_TIMEOUT_SECONDS):
            try:
                blob.delete(timeout=REQUEST_TIMEOUT_SECONDS)
            except gexc.NotFound:
                continue
        shutil.rmtree(self.spool_dir / job_prefix(job), ignore_errors=True)

    def url_of(self, blob: Any) -> str:
        if self.sign_urls:
            signed: str = blob.generate_signed_url(version="v4", expiration=self.url_expiry, method="GET")
            return signed
        token = (blob.metadata or {}).get(TOKEN_METADATA_KEY, "").split(",")[0]
        return token_download_url(self.download_base, self.bucket.name, blob.name, token)

    # ---- upload with spool, precondition and retries ----

    def _store(self, name: str, data: bytes, content_type: str, metadata: dict[str, str]) -> Any:
        spool = self._spool(name, data)
        blob = self.bucket.blob(name)
        blob.metadata = {**metadata, **({} if self.sign_urls else {TOKEN_METADATA_KEY: str(uuid.uuid4())})}
        stored = self._upload(blob, data, content_type, spool)
        self._unspool(spool)
        return stored

    def _unspool(self, path: Path) -> None:
        """Remove an uploaded file's local copy and the folders it leaves empty."""
        try:
            path.unlink()
        except OSError as exc:
            log.warning("uploaded %s but could not remove its spool file: %s", path, exc)
            return
        for parent in path.parents:
            if parent == self.spool_dir or self.spool_dir not in parent.parents:
                break
            try:
                parent.rmdir()
            except OSError:
                break  # not empty: other files of the job are still spooled

    def _spool(self, name: str, data: bytes) -> Path:
        path = self.spool_dir / name
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        except OSError as exc:
            raise StorageError(f"cannot spool {name} locally before upload: {exc}") from exc
        return path

    def _upload(self, blob: Any, data: bytes, content_type: str, spool: Path) -> Any:
        from google.api_core import exceptions as gexc

        last: Exception | None = None
        for attempt in range(1, self.attempts + 1):
            try:
                # retry=None: this loop is the retry policy, so a dead endpoint fails in seconds, not minutes.
                blob.upload_from_string(data, content_type=content_type, if_generation_match=0,
                                        timeout=REQUEST_TIMEOUT_SECONDS, retry=None)
                return blob
            except gexc.PreconditionFailed:
                return self._existing(blob.name, data)
            except (gexc.BadRequest, gexc.Forbidden, gexc.Unauthorized, gexc.NotFound) as exc:
                last = exc  # not transient: the bucket is missing or we may not write to it
                break
            except Exception as exc:  # noqa: BLE001 - transport and 5xx errors alike are worth another try
                last = exc
                log.warning("upload of %s failed (attempt %d/%d): %s", blob.name, attempt, self.attempts, _short(exc))
                if attempt < self.attempts:
                    time.sleep(self.backoff * 2 ** (attempt - 1))
        raise StorageError(f"upload of {blob.name} to bucket {self.bucket.name} failed after {attempt} attempt(s): "
                           f"{_short(last)}; the file is kept at {spool}")

    def _existing(self, name: str, data: bytes) -> Any:
        """The object already exists (a retried job attempt): fine if it holds these bytes, an error otherwise."""
        existing = self.bucket.get_blob(name, timeout=REQUEST_TIMEOUT_SECONDS)
        if existing is not None and existing.md5_hash == md5_b64(data):
            return existing
        raise StorageError(f"{name} already exists in bucket {self.bucket.name} with different content; "
                           "refusing to overwrite it")


def _short(exc: BaseException | None) -> str:
    text = f"{type(exc).__name__}: {exc}" if exc is not None else "unknown error"
    return text if len(text) <= 300 else text[:300] + "..."
