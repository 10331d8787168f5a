"""Outbound HTTP under one URL policy: webhooks, input images and anything else the server fetches."""

from comfyfleet.net.fetch import FetchResult, fetch
from comfyfleet.net.policy import (
    EndpointUrlError,
    UrlPolicy,
    UrlPolicyError,
    check_endpoint_url,
    endpoint_url_refusal,
)

__all__ = ["EndpointUrlError", "FetchResult", "UrlPolicy", "UrlPolicyError", "check_endpoint_url",
           "endpoint_url_refusal", "fetch"]
