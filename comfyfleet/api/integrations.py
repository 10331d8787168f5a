"""The integration options of a job request: images by URL, webhook, output spec (turned into Job fields).

Called by the generate route; every refusal is a FieldError naming the request field, answered with 422.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from comfyfleet.api.schemas import JobCreate
from comfyfleet.jobs.model import OutputSpec, WebhookSpec
from comfyfleet.net.images import InputImageError, resolve_input_images
from comfyfleet.net.policy import IPAddress, UrlPolicy, UrlPolicyError, check_addresses, parse_url
from comfyfleet.settings import ApiSettings


class FieldError(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def outbound_policy(settings: ApiSettings, max_bytes: int) -> UrlPolicy:
    return UrlPolicy.build(settings.outbound_allow_hosts, allow_http=settings.outbound_allow_http,
                           timeout_seconds=settings.outbound_timeout_seconds,
                           max_redirects=settings.outbound_max_redirects, max_bytes=max_bytes)


def webhook_spec(settings: ApiSettings, body: JobCreate, owner: str) -> WebhookSpec | None:
    """The job's webhook: the request's, else the owner's default; its URL shape checked against the policy."""
    if body.webhook is not None:
        spec, field = WebhookSpec(url=body.webhook.url, on_start=body.webhook.on_start), "webhook.url"
    elif owner in settings.webhook_defaults:
        spec, field = WebhookSpec(url=settings.webhook_defaults[owner]), "webhook"
    else:
        return None
    if not settings.webhook_secret:
        raise FieldError("webhook", "webhooks are not enabled on this server (no COMFYFLEET_WEBHOOK_SECRET)")
    try:
        policy = outbound_policy(settings, 0)
        target = parse_url(spec.url, policy)
        literal = _ip_literal(target.host)
        if literal is not None:  # an address is checked now; names are resolved and checked at each delivery
            check_addresses(target.host, [literal], policy)
    except UrlPolicyError as exc:
        raise FieldError(field, str(exc)) from None
    return spec


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def output_spec(body: JobCreate) -> OutputSpec | None:
    if body.output is None:
        return None
    if body.output.quality is not None and body.output.format not in ("webp", "jpeg"):
        raise FieldError("output.quality", "quality applies to webp and jpeg only")
    return OutputSpec(format=body.output.format, quality=body.output.quality, inline=body.output.inline)


async def job_integrations(settings: ApiSettings, body: JobCreate, owner: str) -> tuple[dict[str, bytes],
                                                                                         dict[str, Any]]:
    """(input images as bytes, extra Job fields) for a request; raises FieldError."""
    extras = {"webhook": webhook_spec(settings, body, owner), "output": output_spec(body)}
    if not body.input_images:  # most requests: no policy to build, nothing to fetch
        return {}, extras
    try:
        images = await resolve_input_images(body.input_images,
                                            outbound_policy(settings, settings.input_image_max_bytes))
    except InputImageError as exc:
        raise FieldError(exc.field, exc.message) from None
    return images, extras
