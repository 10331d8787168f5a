"""Pure parts of the Firebase Storage output store: object names, metadata, URLs."""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import pytest

from comfyfleet.jobs.model import Job
from comfyfleet.jobs.workflow import workflow_hash
from comfyfleet.store.firebase import (
    FirebaseOutputStore,
    input_object_name,
    job_seed,
    object_metadata,
    object_name,
    token_download_url,
)
from comfyfleet.store.outputs import StorageError

WORKFLOW = {
    "3": {"class_type": "KSampler", "inputs": {"seed": 42, "steps": 4, "model": ["4", 0]}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
}


def make_job(**kw) -> Job:
    return Job(id="job-1", owner="uid-abc", workflow=kw.pop("workflow", WORKFLOW), **kw)


def test_object_names_follow_the_generations_layout():
    assert object_name("uid-abc", "job-1", "ComfyUI_00001_.png") == "generations/uid-abc/job-1/ComfyUI_00001_.png"
    assert input_object_name("uid-abc", "job-1", "cat.png") == "generations/uid-abc/job-1/inputs/cat.png"


@pytest.mark.parametrize("bad", ["..", "", "."])
def test_object_names_refuse_path_tricks(bad):
    with pytest.raises(StorageError):
        object_name("uid", "job", bad)


def test_object_names_strip_directories_from_filenames():
    assert object_name("uid", "job", "../../etc/passwd") == "generations/uid/job/passwd"


def test_seed_from_params_first_then_the_sampler_node():
    assert job_seed(make_job(params={"seed": 7})) == 7
    assert job_seed(make_job()) == 42
    advanced = {"1": {"class_type": "KSamplerAdvanced", "inputs": {"noise_seed": 9}}}
    assert job_seed(make_job(workflow=advanced)) == 9
    assert job_seed(make_job(workflow={"1": {"class_type": "SaveImage", "inputs": {}}})) is None


def test_metadata_carries_job_workflow_hash_and_seed_as_strings():
    meta = object_metadata(make_job(), node_id="9")
    assert meta == {"jobId": "job-1", "owner": "uid-abc", "workflowHash": workflow_hash(WORKFLOW), "seed": "42",
                    "nodeId": "9"}
    assert "seed" not in object_metadata(make_job(workflow={}))


def test_token_url_escapes_the_object_name_as_one_segment():
    url = token_download_url("https://firebasestorage.googleapis.com/v0", "b.appspot.com",
                             "generations/u/j/a b.png", "tok-1")
    assert url == ("https://firebasestorage.googleapis.com/v0/b/b.appspot.com/o/"
                   "generations%2Fu%2Fj%2Fa%20b.png?alt=media&token=tok-1")


def test_signed_urls_when_the_credentials_hold_a_key(tmp_path):
    """A service-account key signs V4 URLs locally (no network): the URL carries the configured expiry."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from google.cloud import storage
    from google.oauth2 import service_account

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    creds = service_account.Credentials.from_service_account_info({
        "type": "service_account", "project_id": "p", "private_key_id": "k1", "private_key": pem,
        "client_email": "sa@p.iam.gserviceaccount.com", "client_id": "1", "token_uri": "https://oauth2.googleapis.com/token",
    })
    bucket = storage.Client(project="p", credentials=creds).bucket("p.appspot.com")
    store = FirebaseOutputStore(bucket, tmp_path, sign_urls=True, url_expiry_seconds=3600)
    url = store.url_of(bucket.blob("generations/u/j/out.png"))
    query = parse_qs(urlparse(url).query)
    assert urlparse(url).path == "/p.appspot.com/generations/u/j/out.png"
    assert query["X-Goog-Expires"] == ["3600"] and query["X-Goog-Signature"][0]
    assert query["X-Goog-Credential"][0].startswith("sa@p.iam.gserviceaccount.com/")
