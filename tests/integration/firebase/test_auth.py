"""Firebase ID-token auth through the real API: the failure table (401), admin rights (403 / 200).

Two API processes:
- "verify": full signature and expiry checks. Tokens are signed with a local RSA key whose certificate a loopback
  server publishes; the API's firebase-admin is pointed at it by certurl/sitecustomize.py. (With the Auth
  emulator, firebase-admin skips both checks, so expired and forged tokens can only be tested this way.)
- "emulated": the Auth emulator issues the tokens; revocation (which asks the Auth backend) is tested here.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.firebase.emulators import PROJECT, AuthEmulator, TokenIssuer, other_key_pem
from tests.support.stack import Stack, auth, wait_until

CERTURL_DIR = Path(__file__).parent / "certurl"
JOBS = "/api/comfyui/jobs"
CLEAN = "/api/queue/clean"


def service_account_file(path: Path, issuer: TokenIssuer) -> Path:
    """A service-account key file (a local key, never used to call Google): the credentials-file code path."""
    path.write_text(json.dumps({
        "type": "service_account", "project_id": PROJECT, "private_key_id": "local", "private_key": issuer.key_pem,
        "client_email": f"comfyfleet@{PROJECT}.iam.gserviceaccount.com", "client_id": "1",
        "token_uri": "https://oauth2.googleapis.com/token",
    }))
    return path


@pytest.fixture(scope="module")
def verify_stack(tmp_path_factory, redis_server, token_issuer: TokenIssuer) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("auth-verify")
    env = {
        "COMFYFLEET_AUTH_MODE": "firebase",
        "COMFYFLEET_FIREBASE_PROJECT_ID": PROJECT,
        "COMFYFLEET_FIREBASE_CREDENTIALS_FILE": str(service_account_file(tmp / "sa.json", token_issuer)),
        "FIREBASE_AUTH_EMULATOR_HOST": "",  # real verification, whatever the outer environment says
        "PYTHONPATH": str(CERTURL_DIR),
        "COMFYFLEET_TEST_ID_TOKEN_CERT_URL": token_issuer.url,
    }
    stack = Stack(tmp, redis_server.url, [], workers=0, env=env)
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def emulated_stack(tmp_path_factory, redis_server, auth_emulator: AuthEmulator) -> Iterator[Stack]:
    env = {
        "COMFYFLEET_AUTH_MODE": "firebase",
        "COMFYFLEET_FIREBASE_PROJECT_ID": PROJECT,
        "COMFYFLEET_FIREBASE_CHECK_REVOKED": "true",
        "FIREBASE_AUTH_EMULATOR_HOST": auth_emulator.host,
    }
    stack = Stack(tmp_path_factory.mktemp("auth-emulated"), redis_server.url, [], workers=0, env=env)
    yield stack
    stack.stop()


@pytest.fixture
def admin_app(auth_emulator: AuthEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """firebase-admin in this process, talking to the Auth emulator (to set claims and revoke tokens)."""
    import firebase_admin

    from comfyfleet.firebase_app import _anonymous_credential

    monkeypatch.setenv("FIREBASE_AUTH_EMULATOR_HOST", auth_emulator.host)
    app = firebase_admin.initialize_app(_anonymous_credential(), {"projectId": PROJECT},
                                        name=f"test-admin-{uuid.uuid4().hex[:8]}")
    yield app
    firebase_admin.delete_app(app)


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"]


def assert_401(response, fragment: str, case: str = "") -> None:
    assert response.status_code == 401, f"{case}: {response.text}"
    assert response.headers["www-authenticate"] == "Bearer"
    error = error_of(response)
    assert error["code"] == "unauthorized" and fragment in error["message"], f"{case}: {error}"


def test_the_failure_table(verify_stack: Stack, token_issuer: TokenIssuer):
    http = verify_stack.http
    valid = token_issuer.token("uid-alice")
    assert http.get(JOBS, headers=auth(valid)).status_code == 200

    cases = {
        "missing": ({}, "missing bearer token"),
        "not bearer": ({"Authorization": f"Basic {valid}"}, "Bearer <token>"),
        "malformed": (auth("not-a-jwt"), "malformed bearer token"),
        "garbage jwt": (auth("aaaa.bbbb.cccc"), "not a well-formed JWT"),
        "expired": (auth(token_issuer.token("uid-alice", expires_in=-3600)), "expired"),
        "forged": (auth(token_issuer.token("uid-alice", key_pem=other_key_pem())), "signature does not verify"),
        "other project": (auth(token_issuer.token("uid-alice", project="someone-else")), "audience"),
    }
    for name, (headers, fragment) in cases.items():
        assert_401(http.get(JOBS, headers=headers), fragment, case=name)

    log = verify_stack.logs()
    for headers, _ in cases.values():
        secret = headers.get("Authorization", "").partition(" ")[2]
        assert len(secret) < 12 or secret not in log, "a token was written to the API log"
    assert valid not in log and valid.split(".")[2] not in log


def test_admin_rights_come_from_the_custom_claim(verify_stack: Stack, token_issuer: TokenIssuer):
    http = verify_stack.http
    user = token_issuer.token("uid-bob")
    admin = token_issuer.token("uid-root", admin=True)
    not_quite = token_issuer.token("uid-eve", admin="true")  # a string is not the claim

    denied = http.post(CLEAN, headers=auth(user))
    assert denied.status_code == 403 and error_of(denied)["code"] == "forbidden"
    assert http.post(CLEAN, headers=auth(not_quite)).status_code == 403
    allowed = http.post(CLEAN, headers=auth(admin))
    assert allowed.status_code == 200, allowed.text
    assert "removed" in allowed.json()


def test_uid_is_the_owner_and_users_see_only_their_jobs(verify_stack: Stack, token_issuer: TokenIssuer):
    alice, bob = token_issuer.token("uid-alice"), token_issuer.token("uid-bob")
    created = verify_stack.generate({"workflow": {"3": {"class_type": "KSampler", "inputs": {"seed": 1}}}},
                                    token=alice)
    assert created.status_code == 202, created.text
    assert created.json()["owner"] == "uid-alice"
    job_id = created.json()["jobId"]
    assert verify_stack.http.get(f"/api/comfyui/job/{job_id}", headers=auth(bob)).status_code == 404
    ids = [j["jobId"] for j in verify_stack.http.get(JOBS, headers=auth(alice)).json()["jobs"]]
    assert job_id in ids


def test_emulator_tokens_admin_claim_and_revocation(emulated_stack: Stack, auth_emulator: AuthEmulator,
                                                    admin_app):
    from firebase_admin import auth as fb_auth

    http = emulated_stack.http
    email = f"u{uuid.uuid4().hex[:8]}@example.com"
    signed_up = auth_emulator.sign_up(email)
    uid, token = signed_up["localId"], signed_up["idToken"]
    mine = http.get(JOBS, headers=auth(token))
    assert mine.status_code == 200, mine.text
    assert http.post(CLEAN, headers=auth(token)).status_code == 403

    fb_auth.set_custom_user_claims(uid, {"admin": True}, app=admin_app)
    admin_token = auth_emulator.sign_in(email)["idToken"]
    assert http.post(CLEAN, headers=auth(admin_token)).status_code == 200

    # Revocation compares the token's issue time with the user's tokensValidAfter, both in whole seconds.
    issued = fb_auth.verify_id_token(admin_token, app=admin_app)["iat"]
    wait_until(lambda: time.time() >= issued + 1.1, what="a new second after the token was issued")
    fb_auth.revoke_refresh_tokens(uid, app=admin_app)
    assert_401(http.get(JOBS, headers=auth(admin_token)), "revoked")
    fresh = auth_emulator.sign_in(email)["idToken"]
    assert http.get(JOBS, headers=auth(fresh)).status_code == 200

    fb_auth.update_user(uid, disabled=True, app=admin_app)
    assert_401(http.get(JOBS, headers=auth(fresh)), "disabled")
