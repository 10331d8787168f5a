"""Signed job notifications (Standard Webhooks): the outbox written with job state, and the deliverer loop."""

from comfyfleet.webhooks.signing import WebhookVerificationError, secret_key, sign, verify, webhook_headers

__all__ = ["WebhookVerificationError", "secret_key", "sign", "verify", "webhook_headers"]
