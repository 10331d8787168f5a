"""The README's receiver example verifies exactly what we sign (and refuses what we would not)."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

from comfyfleet.webhooks.signing import webhook_headers

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "webhook_receiver.py"


def load_verify():  # noqa: ANN201
    spec = importlib.util.spec_from_file_location("webhook_receiver", EXAMPLE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.verify


def test_example_receiver_agrees_with_the_signer() -> None:
    verify = load_verify()
    body = b'{"type":"job.succeeded"}'
    now = int(time.time())
    headers = webhook_headers(SECRET, "msg_1", now, body)
    assert verify(SECRET, headers, body)
    assert not verify(SECRET, headers, body + b"x")
    assert not verify(SECRET, webhook_headers(SECRET, "msg_1", now - 301, body), body)
    assert not verify("whsec_QUJDREVGR0hJSktMTU5PUFFSU1RVVldY", headers, body)
