"""Job events: how a change to a job record reaches the API's streams (SSE, sync waits).

Events never carry the workflow (it can be large); readers restore `workflow={}`.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from comfyfleet.jobs.model import Job
from comfyfleet.keys import Keys


def event_payload(job: Job, event: str) -> str:
    body: dict[str, Any] = job.model_dump(mode="json", exclude={"workflow"})
    body["workflow"] = {}
    return json.dumps({"event": event, "job": body}, separators=(",", ":"))


def add_event(pipe: redis.client.Pipeline, keys: Keys, job: Job, event: str) -> None:
    """Queue the commands that publish one event for job on pipe."""
    pipe.publish(keys.events(job.id), event_payload(job, event))
