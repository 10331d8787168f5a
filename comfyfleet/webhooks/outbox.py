"""The webhook outbox in Redis: deliveries are queued by the job write that causes them.

`queue_webhooks` runs inside JobRepo.write just before its compare-and-set: it lists the new deliveries on the
job (so they are written with the state, atomically) and puts them in the outbox first. If the state write then
loses its race (or the process dies in between) the outbox holds an entry the job never lists: the deliverer
recognises such an orphan by the job record and drops it after a grace period. So every final state that is
written is delivered at least once, and nothing is delivered for a state that was never written.

Layout under the install's key prefix:
- `<p>:webhooks:due`       zset of delivery ids scored by when the next attempt is due;
- `<p>:webhooks:msg:<id>`  hash {job_id, event, url, body, created, attempts} (the body is signed as is);
- `<p>:webhooks:stats`     hash of counters {delivered, failed_attempts, gave_up} for metrics.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import redis

from comfyfleet.jobs.model import Job, JobState, WebhookDelivery, utcnow
from comfyfleet.keys import Keys

FINAL_EVENTS = {JobState.SUCCEEDED: "job.succeeded", JobState.FAILED: "job.failed",
                JobState.CANCELLED: "job.cancelled"}
START_EVENT = "job.started"
# Delivery records outlive their last attempt by a week so a stuck or failed delivery can be inspected.
MESSAGE_TTL_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class WebhookKeys:
    prefix: str

    @classmethod
    def of(cls, keys: Keys) -> WebhookKeys:
        return cls(keys.prefix)

    @property
    def due(self) -> str:
        return f"{self.prefix}:webhooks:due"

    def message(self, delivery_id: str) -> str:
        return f"{self.prefix}:webhooks:msg:{delivery_id}"

    @property
    def stats(self) -> str:
        return f"{self.prefix}:webhooks:stats"


def due_events(before: Job | None, after: Job) -> list[str]:
    """Which notifications a job change causes (pure): its final state once, and its first start if asked."""
    if after.webhook is None:
        return []
    sent = {d.event for d in after.webhook_deliveries}
    events: list[str] = []
    was = before.state if before is not None else None
    if after.webhook.on_start and after.state is JobState.RUNNING and was is not JobState.RUNNING \
            and START_EVENT not in sent:
        events.append(START_EVENT)
    final = FINAL_EVENTS.get(after.state)
    if final and (was is None or not was.is_terminal) and final not in sent:
        events.append(final)
    return events


def delivery_id(job_id: str, event: str) -> str:
    """Stable per job and event: a retried delivery keeps its webhook-id, so receivers can deduplicate."""
    return f"msg_{job_id.replace('-', '')}_{event.split('.')[-1]}"


def payload(job: Job, event: str) -> bytes:
    """The JSON body: {type, timestamp, data: the job as GET /api/comfyui/job/{id} returns it}."""
    from comfyfleet.api.schemas import JobPublic  # the public job shape, one definition for REST and webhooks

    data = JobPublic.of(job).model_dump(mode="json", by_alias=True)
    return json.dumps({"type": event, "timestamp": utcnow().isoformat(), "data": data},
                      separators=(",", ":")).encode()


def queue_webhooks(conn: redis.Redis, keys: Keys, before: Job | None, after: Job) -> Job:
    """Put the deliveries this change causes in the outbox and return the job listing them as pending.

    Call it from every job write, before the write itself (see the module docstring for why that order).
    """
    events = due_events(before, after)
    if not events or after.webhook is None:
        return after
    wk = WebhookKeys.of(keys)
    now = time.time()
    deliveries = list(after.webhook_deliveries)
    with conn.pipeline(transaction=True) as pipe:
        for event in events:
            did = delivery_id(after.id, event)
            pipe.hset(wk.message(did), mapping={"job_id": after.id, "event": event, "url": after.webhook.url,
                                                "body": payload(after, event), "created": str(now)})
            pipe.expire(wk.message(did), MESSAGE_TTL_SECONDS)
            pipe.zadd(wk.due, {did: now}, nx=True)
            deliveries.append(WebhookDelivery(id=did, event=event))
        pipe.execute()
    return after.model_copy(update={"webhook_deliveries": deliveries})


def counters(conn: redis.Redis, keys: Keys) -> dict[str, int]:
    raw: dict[Any, Any] = conn.hgetall(WebhookKeys.of(keys).stats)
    return {k.decode(): int(v) for k, v in raw.items()}
