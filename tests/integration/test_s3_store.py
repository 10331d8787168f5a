"""The S3-compatible output store against a real S3 server (moto in server mode), alone and end to end."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from comfyfleet.jobs.model import Job
from comfyfleet.settings import CommonSettings
from comfyfleet.store.outputs import StorageError
from comfyfleet.store.s3 import S3OutputStore
from tests.support.s3 import S3Server
from tests.support.stack import auth


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[S3Server]:
    server = S3Server(tmp_path / "s3")
    yield server
    server.stop()


def store_for(s3: S3Server, bucket: str, **overrides: object) -> S3OutputStore:
    s3.client().create_bucket(Bucket=bucket)
    env = {k.removeprefix("COMFYFLEET_").lower(): v for k, v in s3.env(bucket).items()}
    return S3OutputStore.from_settings(CommonSettings(**{**env, **overrides}))  # type: ignore[arg-type]


def test_put_read_presign_and_no_overwrite(s3: S3Server) -> None:
    store = store_for(s3, "outputs-one", s3_prefix="gen", storage_url_expiry_seconds=600)
    job = Job(owner="alice", workflow={"3": {"class_type": "KSampler", "inputs": {"seed": 7}}})
    out = store.put(job, "9", "../ComfyUI_00001_.png", b"\x89PNG-one", "image/png")
    assert out.key == f"gen/alice/{job.id}/ComfyUI_00001_.png" and out.filename == "ComfyUI_00001_.png"
    assert store.read(out.key) == b"\x89PNG-one"
    head = s3.client().head_object(Bucket="outputs-one", Key=out.key)
    assert head["ContentType"] == "image/png"
    assert head["Metadata"] == {"jobid": job.id, "owner": "alice", "workflowhash": head["Metadata"]["workflowhash"],
                                "seed": "7", "nodeid": "9"}
    fetched = httpx.get(out.url or "", timeout=10)  # a presigned URL needs no credentials
    assert fetched.status_code == 200 and fetched.content == b"\x89PNG-one"
    # SigV4 query signing with the configured expiry (moto does not check signatures, AWS/MinIO/R2 do).
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in (out.url or "") and "X-Amz-Expires=600" in (out.url or "")

    again = store.put(job, "9", "ComfyUI_00001_.png", b"\x89PNG-one", "image/png")  # a retried attempt
    assert again.key == out.key
    with pytest.raises(StorageError, match="refusing to overwrite"):
        store.put(job, "9", "ComfyUI_00001_.png", b"\x89PNG-two", "image/png")
    assert store.read(out.key) == b"\x89PNG-one"

    item = store.put_input(job, "face.png", b"\x89PNG-in")
    assert item.key == f"gen/alice/{job.id}/inputs/face.png" and store.read(item.key) == b"\x89PNG-in"
    store.delete_job(job)
    with pytest.raises(StorageError, match="cannot read"):
        store.read(out.key)


def test_a_missing_bucket_is_a_storage_error(s3: S3Server) -> None:
    store = store_for(s3, "exists-bucket")
    store.bucket = "no-such-bucket"
    job = Job(owner="alice", workflow={})
    with pytest.raises(StorageError, match="no-such-bucket"):
        store.put(job, "1", "a.png", b"x", "image/png")


def test_jobs_store_converted_outputs_in_s3(s3: S3Server, sim_factory, stack_factory) -> None:  # noqa: ANN001
    s3.client().create_bucket(Bucket="fleet-outputs")
    sim = sim_factory()
    stack = stack_factory([sim.url], workers=1, env=s3.env("fleet-outputs"))
    stack.wait_workers_ready(1)
    body = {"template": "txt2img", "params": {"seed": 3, "steps": 2, "prompt": "a fox"},
            "output": {"format": "webp", "quality": 80, "inline": True}}
    r = stack.generate(body)
    assert r.status_code == 202, r.text
    done = stack.wait_state(r.json()["jobId"], timeout=60)
    assert done["state"] == "succeeded", done["error"]
    [output] = done["outputs"]
    assert output["contentType"] == "image/webp" and output["filename"].endswith(".webp")
    key = f"generations/alice/{done['jobId']}/{output['filename']}"
    stored = s3.client().get_object(Bucket="fleet-outputs", Key=key)["Body"].read()
    assert Image.open(io.BytesIO(stored)).format == "WEBP"
    assert httpx.get(output["url"], timeout=10).content == stored
    import base64

    assert base64.b64decode(output["data"]) == stored, "inline data is the stored file"
    r = stack.generate({**body, "output": {"format": "png", "quality": 50}})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "output.quality"
    r = stack.generate({**body, "output": {"format": "gif"}})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "output.format"
    assert stack.http.get(f"/api/comfyui/job/{done['jobId']}", headers=auth()).status_code == 200
