"""The Firebase Storage output store against fake-gcs-server: what a user downloads is what the job made."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx
import pytest

from comfyfleet.jobs.model import Job
from comfyfleet.jobs.workflow import workflow_hash
from comfyfleet.settings import CommonSettings
from comfyfleet.store.factory import output_store
from comfyfleet.store.firebase import TOKEN_METADATA_KEY, FirebaseOutputStore
from comfyfleet.store.outputs import StorageError
from tests.integration.firebase.emulators import BUCKET, PROJECT
from tests.support.procs import free_port

WORKFLOW = {"3": {"class_type": "KSampler", "inputs": {"seed": 1234, "steps": 4}},
            "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "ComfyUI"}}}


def png_bytes(size: int) -> bytes:
    """A PNG signature followed by incompressible bytes: binary-safe transport shows up as a byte mismatch."""
    return b"\x89PNG\r\n\x1a\n" + os.urandom(size - 8)


@pytest.fixture
def store(storage_env, tmp_path: Path) -> FirebaseOutputStore:
    settings = CommonSettings(output_store="firebase", firebase_project_id=PROJECT, firebase_bucket=BUCKET,
                              data_dir=tmp_path)
    built = output_store(settings)
    assert isinstance(built, FirebaseOutputStore)
    return built


@pytest.fixture
def job() -> Job:
    return Job(owner="uid-alice", workflow=WORKFLOW)


def spooled(store: FirebaseOutputStore) -> list[Path]:
    return [p for p in store.spool_dir.rglob("*") if p.is_file()] if store.spool_dir.exists() else []


def test_round_trip_is_byte_exact_and_the_url_downloads_it(store, job):
    data = png_bytes(300_000)
    out = store.put(job, "9", "ComfyUI_00001_.png", data, "image/png")
    assert out.key == f"generations/uid-alice/{job.id}/ComfyUI_00001_.png"
    assert out.size == len(data) and out.content_type == "image/png"
    assert store.read(out.key) == data
    downloaded = httpx.get(out.url, timeout=30)
    assert downloaded.status_code == 200 and downloaded.content == data
    assert spooled(store) == [], "the local copy is removed once the upload succeeded"


def test_objects_carry_content_type_and_job_metadata(store, job):
    out = store.put(job, "9", "ComfyUI_00002_.png", png_bytes(2048), "image/png")
    blob = store.bucket.get_blob(out.key)
    assert blob.content_type == "image/png"
    meta = blob.metadata
    assert meta["jobId"] == job.id and meta["owner"] == "uid-alice" and meta["nodeId"] == "9"
    assert meta["workflowHash"] == workflow_hash(WORKFLOW) and meta["seed"] == "1234"
    token = meta[TOKEN_METADATA_KEY]
    assert out.url.endswith(f"token={token}") and "%2F" in out.url  # a Firebase download-token URL


def test_a_large_image_goes_through_the_resumable_upload(store, job):
    data = png_bytes(12 * 1024 * 1024)  # over google-cloud-storage's 8 MiB multipart limit
    out = store.put(job, "9", "big.png", data, "image/png")
    back = store.read(out.key)
    assert len(back) == len(data) and hashlib.sha256(back).digest() == hashlib.sha256(data).digest()


def test_a_missing_object_is_a_storage_error(store, job):
    with pytest.raises(StorageError, match="no object"):
        store.read(f"generations/uid-alice/{job.id}/never-written.png")


def test_an_existing_object_is_never_overwritten(store, job):
    first = png_bytes(4096)
    out = store.put(job, "9", "same.png", first, "image/png")
    again = store.put(job, "9", "same.png", first, "image/png")  # a retried attempt uploading the same bytes
    assert again.url == out.url
    with pytest.raises(StorageError, match="already exists"):
        store.put(job, "9", "same.png", png_bytes(4096), "image/png")
    assert store.read(out.key) == first


def test_inputs_are_stored_next_to_the_outputs_and_delete_job_removes_all(store, job):
    inp = store.put_input(job, "cat.png", png_bytes(1000))
    out = store.put(job, "9", "o.png", png_bytes(1000), "image/png")
    assert inp.key == f"generations/uid-alice/{job.id}/inputs/cat.png"
    store.delete_job(job)
    for key in (inp.key, out.key):
        with pytest.raises(StorageError):
            store.read(key)


def test_upload_failure_is_retried_then_fails_clearly_and_keeps_the_local_copy(tmp_path, job):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    client = storage.Client(project=PROJECT, credentials=AnonymousCredentials(),
                            client_options={"api_endpoint": dead})
    store = FirebaseOutputStore(client.bucket(BUCKET), tmp_path / "spool", sign_urls=False,
                                url_expiry_seconds=3600, attempts=3, backoff_seconds=0.05)
    data = png_bytes(1000)
    with pytest.raises(StorageError, match=r"failed after 3 attempt\(s\).*kept at"):
        store.put(job, "9", "lost.png", data, "image/png")
    [kept] = spooled(store)
    assert kept.read_bytes() == data
