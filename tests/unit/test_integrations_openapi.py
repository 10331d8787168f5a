"""The integration features are in the OpenAPI document: request fields, job fields, the webhook request."""

from __future__ import annotations

from typing import Any

from comfyfleet.api.app import create_app
from comfyfleet.settings import ApiSettings


def openapi() -> dict[str, Any]:
    # No request is served: building the app and its schema touches no Redis.
    return create_app(ApiSettings(auth_mode="none", host="127.0.0.1", run_health_monitor=False)).openapi()


def test_request_and_job_fields_are_documented() -> None:
    doc = openapi()
    schemas = doc["components"]["schemas"]
    create = schemas["JobCreate"]["properties"]
    assert {"webhook", "output", "inputImages"} <= set(create)
    assert "https://" in create["inputImages"]["description"]
    assert set(schemas["WebhookCreate"]["properties"]) == {"url", "onStart"}
    assert schemas["OutputCreate"]["properties"]["format"]["anyOf"][0]["enum"] == ["png", "webp", "jpeg"]
    job = schemas["JobPublic"]["properties"]
    assert {"webhookUrl", "webhookDeliveries"} <= set(job)
    assert {"attempts", "lastStatus", "state"} <= set(schemas["WebhookDeliveryPublic"]["properties"])
    assert "data" in schemas["OutputPublic"]["properties"]


def test_the_notification_request_is_in_the_webhooks_section() -> None:
    doc = openapi()
    post = doc["webhooks"]["job-event"]["post"]
    headers = {p["name"] for p in post["parameters"] if p["in"] == "header"}
    assert headers == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref.endswith("/WebhookPayload")
