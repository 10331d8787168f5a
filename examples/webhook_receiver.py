"""A webhook receiver that checks comfyfleet's Standard Webhooks signatures (standard library only).

    COMFYFLEET_WEBHOOK_SECRET=whsec_... python examples/webhook_receiver.py 9000

Copy `verify` into any Python service; with comfyfleet installed, `comfyfleet.client.verify_webhook` is the
same check. Answer 2xx quickly (do the work after answering): anything else is retried with backoff, with the
same `webhook-id`, so a receiver that saw an id before can just answer 200 again.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

TOLERANCE_SECONDS = 300  # refuse replays of old messages


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """True when one `v1` signature is HMAC-SHA256(key, f"{id}.{timestamp}.{body}") and the timestamp is fresh."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    msg_id, stamp = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "")
    if not msg_id or not stamp.isdigit() or abs(time.time() - int(stamp)) > TOLERANCE_SECONDS:
        return False
    expected = base64.b64encode(hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest())
    return any(
        version == "v1" and hmac.compare_digest(sig.encode(), expected)
        for version, _, sig in (s.partition(",") for s in headers.get("webhook-signature", "").split())
    )


class Handler(BaseHTTPRequestHandler):
    seen: set[str] = set()

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        headers = {k.lower(): v for k, v in self.headers.items()}
        if not verify(os.environ["COMFYFLEET_WEBHOOK_SECRET"], headers, body):
            self.send_response(401)
            self.end_headers()
            return
        self.send_response(204)
        self.end_headers()
        if headers["webhook-id"] in self.seen:
            return  # a retry of something already handled
        self.seen.add(headers["webhook-id"])
        event = json.loads(body)
        job = event["data"]
        urls = [o["url"] for o in job["outputs"]]
        sys.stdout.write(f"{event['type']}: job {job['jobId']} is {job['state']} {urls}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    HTTPServer(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 9000), Handler).serve_forever()
