"""The comfyfleet Python client, sync (`Client`) and asyncio (`AsyncClient`), typed with the API's own models.

    from comfyfleet.client import Client
    with Client("https://fleet.example", token) as cf:
        job = cf.generate(template="txt2img", params={"prompt": "a fox"}, wait=True)

`verify_webhook(secret, headers, body)` checks a received webhook's Standard Webhooks signature.
"""

from comfyfleet.api.schemas import (
           JobPublic,
           JobsPublic,
           OutputPublic,
           QueueStatsPublic,
           VerifyLoraPublic,
           WorkersPublic,
)
from comfyfleet.client._common import ComfyfleetError, JobEvent, JobTimeout, generate_body
from comfyfleet.client.aio import AsyncClient
from comfyfleet.client.sync import Client
from comfyfleet.webhooks.signing import WebhookVerificationError
from comfyfleet.webhooks.signing import verify as verify_webhook

__all__ = ["AsyncClient", "Client", "ComfyfleetError", "JobEvent", "JobPublic", "JobTimeout", "JobsPublic",
           "OutputPublic", "QueueStatsPublic", "VerifyLoraPublic", "WebhookVerificationError", "WorkersPublic",
           "generate_body", "verify_webhook"]
