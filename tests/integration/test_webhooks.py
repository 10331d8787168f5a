"""Signed webhooks end to end: API -> worker -> simulator -> outbox -> deliverer -> a real loopback receiver."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from comfyfleet.client import verify_webhook
from tests.support.receiver import Receiver, Reply
from tests.support.stack import BOB, auth, wait_until

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def txt2img(seed: int) -> dict:
    return {"template": "txt2img", "params": {"seed": seed, "steps": 2, "prompt": "a fox"}}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.stop()


def webhook_env(receiver: Receiver, **extra: str) -> dict[str, str]:
    return {"COMFYFLEET_WEBHOOK_SECRET": SECRET, "COMFYFLEET_OUTBOUND_ALLOW_HOSTS": "127.0.0.1",
            "COMFYFLEET_WEBHOOK_BACKOFF_SECONDS": "0.2", "COMFYFLEET_WEBHOOK_BACKOFF_MAX_SECONDS": "0.5",
            "COMFYFLEET_WEBHOOK_RETRY_WINDOW_SECONDS": "3",
            "COMFYFLEET_WEBHOOK_DEFAULTS": json.dumps({"bob": receiver.url + "/bob"}), **extra}


def delivered(stack, job_id: str, count: int = 1, token: str | None = None) -> dict:  # noqa: ANN001
    def check() -> dict | None:
        job = stack.job(job_id, **({"token": token} if token else {}))
        finished = [d for d in job["webhookDeliveries"] if d["state"] != "pending"]
        return job if len(finished) >= count else None

    return wait_until(check, timeout=30, what=f"{count} settled deliveries of {job_id}")


def test_signed_notifications_on_start_and_final_state(sim_factory, stack_factory, receiver) -> None:  # noqa: ANN001
    sim = sim_factory(step_seconds=0.05)
    stack = stack_factory([sim.url], workers=1, env=webhook_env(receiver))
    stack.wait_workers_ready(1)
    r = stack.generate({**txt2img(1), "webhook": {"url": receiver.url + "/hook", "onStart": True}})
    assert r.status_code == 202, r.text
    job_id = r.json()["jobId"]
    assert r.json()["webhookUrl"] == receiver.url + "/hook"
    calls = receiver.wait_for(2)
    for call in calls:
        verify_webhook(SECRET, call.headers, call.body)  # raises unless the signature and timestamp check out
        assert call.method == "POST" and call.path == "/hook"
        assert call.headers["content-type"] == "application/json"
    # Deliveries run concurrently, so arrival order is not promised (as in Standard Webhooks): match by type.
    by_type = {json.loads(c.body)["type"]: c for c in calls}
    assert sorted(by_type) == ["job.started", "job.succeeded"]
    final = json.loads(by_type["job.succeeded"].body)
    assert final["data"]["jobId"] == job_id and final["data"]["state"] == "succeeded"
    assert final["data"]["outputs"][0]["url"]
    assert by_type["job.succeeded"].headers["webhook-id"] == f"msg_{job_id.replace('-', '')}_succeeded"
    calls = [by_type["job.started"], by_type["job.succeeded"]]

    job = delivered(stack, job_id, 2)
    deliveries = {d["event"]: d for d in job["webhookDeliveries"]}
    assert deliveries["job.succeeded"]["state"] == "delivered" and deliveries["job.succeeded"]["attempts"] == 1
    assert deliveries["job.succeeded"]["lastStatus"] == 200 and deliveries["job.started"]["state"] == "delivered"
    tampered = {**calls[1].headers}
    with pytest.raises(Exception, match="no matching signature"):
        verify_webhook(SECRET, tampered, calls[1].body + b" ")

    # bob's token has a default webhook: his jobs notify it without asking
    r = stack.generate(txt2img(2), token=BOB)
    bob_job = r.json()["jobId"]
    delivered(stack, bob_job, token=BOB)
    bob_calls = [c for c in receiver.received if c.path == "/bob"]
    assert [json.loads(c.body)["data"]["jobId"] for c in bob_calls] == [bob_job]


def test_failures_are_retried_then_given_up_without_blocking_dispatch(sim_factory, stack_factory,  # noqa: ANN001
                                                                      receiver) -> None:
    answers = iter([503, 500])
    receiver.routes["/flaky"] = lambda _: Reply(next(answers, 200), b"busy")
    receiver.routes["/dead"] = Reply(500, b"<html>down</html>")
    sim = sim_factory()
    stack = stack_factory([sim.url], workers=1, env=webhook_env(receiver))
    stack.wait_workers_ready(1)
    flaky = stack.generate({**txt2img(3), "webhook": {"url": receiver.url + "/flaky"}}).json()["jobId"]
    dead = stack.generate({**txt2img(4), "webhook": {"url": receiver.url + "/dead"}}).json()["jobId"]
    plain = stack.generate(txt2img(5)).json()["jobId"]
    assert stack.wait_state(plain, timeout=60)["state"] == "succeeded", "a failing receiver holds up no job"

    [ok] = delivered(stack, flaky)["webhookDeliveries"]
    assert (ok["state"], ok["attempts"], ok["lastStatus"], ok["lastError"]) == ("delivered", 3, 200, None)
    flaky_ids = {c.headers["webhook-id"] for c in receiver.received if c.path == "/flaky"}
    assert len(flaky_ids) == 1, "retries keep the webhook-id so receivers can deduplicate"

    [gone] = delivered(stack, dead)["webhookDeliveries"]
    assert gone["state"] == "failed" and gone["attempts"] >= 2 and gone["lastStatus"] == 500
    assert "HTTP 500" in gone["lastError"] and gone["nextAttemptAt"] is None
    metrics = stack.http.get("/metrics").text
    failures = [line for line in metrics.splitlines() if line.startswith("comfyfleet_webhook_delivery_failures")]
    assert failures and float(failures[0].split()[-1]) >= 2 + gone["attempts"], failures
    assert 'comfyfleet_webhook_deliveries_total{result="gave_up"} 1.0' in metrics


def test_webhook_requests_are_checked(sim_factory, stack_factory, receiver) -> None:  # noqa: ANN001
    sim = sim_factory()
    stack = stack_factory([sim.url], workers=0, env=webhook_env(receiver))
    no_secret = stack_factory([sim.url], workers=0)
    cases = [
        (stack, {"url": "http://169.254.169.254/latest/meta-data/"}, "webhook.url", "http"),
        (stack, {"url": "https://metadata.google.internal/x"}, "webhook.url", "metadata"),
        (stack, {"url": "ftp://hooks.example/x"}, "webhook.url", "scheme"),
        (stack, {"url": "https://10.0.0.1/x"}, "webhook.url", "private"),
        (stack, {"url": "https://[::1]:9/x"}, "webhook.url", "loopback"),
        (stack, {"url": "https://u:p@hooks.example/x"}, "webhook.url", "credentials"),
        (stack, {"url": 5}, "webhook.url", ""),
        (stack, {"url": "https://hooks.example/x", "extra": 1}, "webhook.extra", ""),
        (no_secret, {"url": "https://hooks.example/x"}, "webhook", "not enabled"),
    ]
    for target, webhook, field, words in cases:
        r = target.generate({**txt2img(6), "webhook": webhook})
        assert r.status_code == 422, (webhook, r.text)
        err = r.json()["error"]
        assert field in [d["field"] for d in err["details"]], (webhook, err)
        assert words in err["message"], (webhook, err)
    assert stack.http.get("/api/queue/stats", headers=auth()).json()["created"] == 0
