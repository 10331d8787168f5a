"""Standard Webhooks signing: the spec's own test vector, and what verification refuses."""

from __future__ import annotations

import pytest

from comfyfleet.webhooks.signing import WebhookVerificationError, secret_key, sign, verify, webhook_headers

# The test vector published with the Standard Webhooks spec (and its reference libraries).
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
STAMP = 1614265330
BODY = b'{"test": 2432232314}'
EXPECTED = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_the_spec_vector() -> None:
    assert sign(SECRET, MSG_ID, STAMP, BODY) == EXPECTED


def test_verify_accepts_what_we_send_even_among_rotated_signatures() -> None:
    headers = webhook_headers(SECRET, MSG_ID, STAMP, BODY)
    verify(SECRET, headers, BODY, now=STAMP + 10)
    rotated = {**headers, "Webhook-Signature": "v1,b2xkLXNpZw== " + headers["webhook-signature"]}
    del rotated["webhook-signature"]
    verify(SECRET, rotated, BODY, now=STAMP)


@pytest.mark.parametrize(("change", "message"), [
    (lambda h, b: (h, b + b" "), "no matching signature"),
    (lambda h, b: ({**h, "webhook-id": "msg_other"}, b), "no matching signature"),
    (lambda h, b: ({**h, "webhook-timestamp": str(STAMP - 301)}, b), "too old"),
    (lambda h, b: ({**h, "webhook-timestamp": "soon"}, b), "not an integer"),
    (lambda h, b: ({**h, "webhook-signature": "v2," + h["webhook-signature"][3:]}, b), "no matching signature"),
    (lambda h, b: ({k: v for k, v in h.items() if k != "webhook-id"}, b), "missing header webhook-id"),
])
def test_verify_refuses(change, message: str) -> None:  # noqa: ANN001
    headers, body = change(webhook_headers(SECRET, MSG_ID, STAMP, BODY), BODY)
    with pytest.raises(WebhookVerificationError, match=message):
        verify(SECRET, headers, body, now=STAMP)


def test_a_wrong_secret_does_not_verify() -> None:
    other = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"
    headers = webhook_headers(SECRET, MSG_ID, STAMP, BODY)
    with pytest.raises(WebhookVerificationError):
        verify(other, headers, BODY, now=STAMP)


@pytest.mark.parametrize(("secret", "message"), [
    ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "starts with 'whsec_'"),
    ("whsec_***", "not valid base64"),
    ("whsec_c2hvcnQ=", "24 to 64"),
])
def test_bad_secrets(secret: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        secret_key(secret)
