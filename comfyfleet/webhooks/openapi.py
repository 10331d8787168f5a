"""The webhook requests comfyfleet sends, described in the API's OpenAPI document (its `webhooks` section)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import FastAPI, Header
from pydantic import BaseModel, Field

from comfyfleet.api.schemas import JobPublic


class WebhookPayload(BaseModel):
    """The JSON body of every notification; `data` is the job as GET /api/comfyui/job/{jobId} returns it."""

    type: Literal["job.started", "job.succeeded", "job.failed", "job.cancelled"]
    timestamp: str = Field(description="when the event happened (ISO 8601)")
    data: JobPublic


def document_webhooks(app: FastAPI) -> None:
    """Add the notification request to the app's OpenAPI document (it is sent by comfyfleet, not served)."""

    @app.webhooks.post("job-event")
    def job_event(
        body: WebhookPayload,
        webhook_id: Annotated[str, Header(alias="webhook-id", description="stable per job and event; dedupe on it")],
        webhook_timestamp: Annotated[str, Header(alias="webhook-timestamp", description="Unix seconds of sending")],
        webhook_signature: Annotated[str, Header(
            alias="webhook-signature",
            description="`v1,` + base64 HMAC-SHA256 of `{id}.{timestamp}.{body}` keyed with the whsec_ secret")],
    ) -> None:
        """A job started (if asked with webhook.onStart) or reached a final state: POSTed to the job's webhook.url,
        signed per the Standard Webhooks spec; answer 2xx within 10 s, else it is retried with backoff."""
