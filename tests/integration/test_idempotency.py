"""Idempotency keys over real HTTP and Redis (issue 9).

Tests marked `after_jobrepo` cover the lead's JobRepo/keys rewrite (owner-safe key layout, atomic
create): they failed on the reliability branch before it was merged and pass on the merged tree. Run them
alone with `pytest tests/integration/test_idempotency.py -m after_jobrepo`.
"""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.stack import TOKENS, auth

PNG = base64.b64encode((Path(__file__).resolve().parents[2] / "examples" / "input.png").read_bytes()).decode()
PARKED = {"workflow": {"1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
                       "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}}
ACME = "acme-token-0123456789abcdef00"
ACME_BOB = "acme-bob-token-0123456789abcd"
COLON_USERS = [*TOKENS, {"token": ACME, "owner": "acme"}, {"token": ACME_BOB, "owner": "acme:bob"}]


def test_an_idempotent_repeat_stores_no_second_copy_of_its_inputs(stack_factory):
    stack = stack_factory([], workers=0)
    body = {**PARKED, "inputImages": {"in.png": PNG}, "idempotencyKey": "once"}
    answers = [stack.generate(body) for _ in range(5)]
    assert [r.status_code for r in answers] == [202, 200, 200, 200, 200]
    assert len({r.json()["jobId"] for r in answers}) == 1
    folders = list((stack.tmp / "data" / "outputs" / "alice").iterdir())
    assert [f.name for f in folders] == [answers[0].json()["jobId"]], "one job folder, not one per repeat"
    header = [stack.generate({**PARKED, "inputImages": {"in.png": PNG}}, headers={"Idempotency-Key": "h"})
              for _ in range(3)]
    assert [r.status_code for r in header] == [202, 200, 200]
    assert len(list((stack.tmp / "data" / "outputs" / "alice").iterdir())) == 2


@pytest.mark.after_jobrepo
def test_idempotency_keys_do_not_collide_across_users(stack_factory):
    stack = stack_factory([], workers=0, env={"COMFYFLEET_API_TOKENS": json.dumps(COLON_USERS)})
    theirs = stack.generate({**PARKED, "inputImages": {"in.png": PNG}, "idempotencyKey": "K"}, token=ACME_BOB)
    assert theirs.status_code == 202
    mine = stack.generate({**PARKED, "inputImages": {"in.png": PNG}, "idempotencyKey": "bob:K"}, token=ACME)
    assert mine.status_code == 202, f"user acme got user acme:bob's job: {mine.text}"
    assert mine.json()["jobId"] != theirs.json()["jobId"] and mine.json()["owner"] == "acme"


@pytest.mark.after_jobrepo
def test_concurrent_requests_with_one_key_create_one_job(stack_factory):
    stack = stack_factory([], workers=0)
    body = {**PARKED, "inputImages": {"in.png": PNG}, "idempotencyKey": "race"}

    def send(_: int) -> tuple[int, str]:
        r = stack.http.post("/api/comfyui/generate", json=body, headers=auth())
        return r.status_code, r.json()["jobId"]

    for _ in range(5):  # several rounds: the window is small
        body["idempotencyKey"] = f"race-{_}"
        with ThreadPoolExecutor(max_workers=12) as pool:
            results = list(pool.map(send, range(12)))
        assert len({job_id for _, job_id in results}) == 1, results
        assert sorted(code for code, _ in results) == [200] * 11 + [202], results
    created = stack.http.get("/api/queue/stats", headers=auth()).json()["created"]
    assert created == 5, f"{created} jobs recorded for 5 keys"
    assert len(list((stack.tmp / "data" / "outputs" / "alice").iterdir())) == 5, "losers' inputs are removed"
