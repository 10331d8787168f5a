"""The whole Firebase path: sign in -> generate through the API -> image in the bucket -> record in Firestore ->
history lists it (still, after Redis forgot the job)."""

from __future__ import annotations

import io
import uuid

import httpx
import redis
from PIL import Image

from comfyfleet.keys import Keys
from comfyfleet.settings import CommonSettings
from comfyfleet.store.firestore import firestore_client
from tests.integration.firebase.emulators import BUCKET, PROJECT
from tests.support.stack import auth, wait_until


def test_sign_in_generate_store_record_and_list(emulator_env, sim_factory, stack_factory, redis_server, tmp_path):
    from firebase_admin import storage

    from comfyfleet.firebase_app import firebase_app

    collection = f"jobs_{uuid.uuid4().hex[:8]}"
    env = {**emulator_env.env(), "COMFYFLEET_AUTH_MODE": "firebase", "COMFYFLEET_OUTPUT_STORE": "firebase",
           "COMFYFLEET_FIRESTORE_ENABLED": "true", "COMFYFLEET_FIRESTORE_COLLECTION": collection}
    sim = sim_factory(step_seconds=0.01)
    stack = stack_factory([sim.url], workers=1, env=env)

    # 1. sign in (the Auth emulator issues the ID token a web or mobile app would send)
    user = emulator_env.auth.sign_up(f"full-{uuid.uuid4().hex[:8]}@example.com")
    uid, token = user["localId"], user["idToken"]
    wait_until(lambda: stack.http.get("/api/comfyui/workers", headers=auth(token)).json()["ready"] >= 1,
               what="a ready worker")

    # 2. generate through the API
    created = stack.generate({"template": "txt2img", "params": {"seed": 4242, "steps": 3, "prompt": "a red fox"}},
                             token=token)
    assert created.status_code == 202, created.text
    job_id = created.json()["jobId"]
    assert created.json()["owner"] == uid
    final = stack.wait_state(job_id, token=token, timeout=60)
    assert final["state"] == "succeeded", final["error"]

    # 3. the image is in the bucket, under the user's folder, with its metadata, and its URL downloads it
    [output] = final["outputs"]
    settings = CommonSettings(firebase_project_id=PROJECT, firebase_bucket=BUCKET)
    bucket = storage.bucket(BUCKET, app=firebase_app(settings))
    key = f"generations/{uid}/{job_id}/{output['filename']}"
    blob = bucket.get_blob(key)
    assert blob is not None, f"no {key} in the bucket"
    assert blob.content_type == "image/png" and blob.size == output["size"]
    assert blob.metadata["jobId"] == job_id and blob.metadata["seed"] == "4242" and blob.metadata["workflowHash"]
    png = httpx.get(output["url"], timeout=30)
    assert png.status_code == 200 and png.content == blob.download_as_bytes()
    Image.open(io.BytesIO(png.content)).verify()
    via_api = stack.http.get(f"/api/comfyui/outputs/{job_id}/{output['filename']}", headers=auth(token))
    assert via_api.status_code == 200 and via_api.content == png.content
    spool = stack.tmp / "data" / "spool"
    assert not spool.exists() or not [p for p in spool.rglob("*") if p.is_file()], "local copies left behind"

    # 4. the record is in Firestore, final state and download URL included
    records = firestore_client(settings).collection(collection)

    def final_record() -> dict | None:
        snap = records.document(job_id).get(timeout=10)
        data = snap.to_dict() if snap.exists else None
        return data if data and data["state"] == "succeeded" else None

    record = wait_until(final_record, what="the succeeded record in Firestore")
    assert record["owner"] == uid and record["outputs"][0]["url"] == output["url"]
    assert record["params"]["seed"] == 4242 and record["attempts"] == 1 and record["finished_at"] is not None

    # 5. the history lists it, from Firestore: still there once Redis has forgotten the job
    conn = redis.Redis.from_url(redis_server.url)
    conn.delete(Keys(stack.prefix).job(job_id))
    assert stack.http.get(f"/api/comfyui/job/{job_id}", headers=auth(token)).status_code == 404
    history = stack.http.get("/api/comfyui/jobs", headers=auth(token))
    assert history.status_code == 200, history.text
    [listed] = history.json()["jobs"]
    assert listed["jobId"] == job_id and listed["state"] == "succeeded" and listed["outputs"][0]["url"] == output["url"]
    other = emulator_env.auth.sign_up(f"other-{uuid.uuid4().hex[:8]}@example.com")["idToken"]
    assert stack.http.get("/api/comfyui/jobs", headers=auth(other)).json()["jobs"] == []
