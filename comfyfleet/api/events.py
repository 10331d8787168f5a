"""Job event streams for SSE and the WebSocket: one shared subscription, resume by id, bounded in number and life.

Both transports send the same events: first `state` with the job as it is now (or, on a resume, the events
missed since the client's last event id), then every `state`/`progress` change until the job is final.
Each event has the id of its entry in the job's Redis Stream (comfyfleet.store.jobevents).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from comfyfleet.api.errors import ApiError
from comfyfleet.jobs.model import Job
from comfyfleet.store.jobevents import (
    EventHub,
    JobEvent,
    format_event_id,
    parse_event_id,
    wait_until_final,
)

__all__ = ["EventStreamResponse", "StreamGate", "follow_job", "sse_frame", "wait_until_final"]

# SSE comment lines keep proxies from closing an idle stream while a job waits in the queue.
KEEPALIVE_SECONDS = 15.0


@dataclass
class StreamGate:
    """Counts one process's open streams per user and refuses one past the limit (429)."""

    limit: int
    open: dict[str, int] = field(default_factory=dict)
    refused: int = 0  # streams refused at the limit since start (a metric)

    def acquire(self, owner: str) -> Callable[[], None]:
        """Take a slot for `owner`; returns the function that gives it back (safe to call twice)."""
        if self.open.get(owner, 0) >= self.limit:
            self.refused += 1
            raise ApiError(429, f"too many open streams: at most {self.limit} per user (max_streams_per_user); "
                                "close one or poll /api/comfyui/job/{jobId}",
                           details={"limit": self.limit, "setting": "max_streams_per_user"},
                           headers={"Retry-After": "5"})
        self.open[owner] = self.open.get(owner, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            left = self.open.get(owner, 1) - 1
            if left > 0:
                self.open[owner] = left
            else:
                self.open.pop(owner, None)

        return release


class EventStreamResponse(StreamingResponse):
    """A streaming response that gives back its stream slot however it ends (even if never started)."""

    def __init__(self, content: AsyncIterator[bytes], release: Callable[[], None]):
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


def parse_last_event_id(value: str | None, field_name: str) -> tuple[int, int] | None:
    """The client's last seen event id (Redis stream id `ms-seq`), or a 422 naming the field."""
    if value is None or value == "":
        return None
    parsed = parse_event_id(value)
    if parsed is None:
        raise ApiError(422, f"{field_name}: {value[:40]!r} is not an event id like 1733050000000-0",
                       details=[{"field": field_name, "message": "not an event id"}])
    return parsed


async def follow_job(hub: EventHub, job_id: str, read_job: Callable[[], Awaitable[Job]],
                     after: tuple[int, int] | None, lifetime: float,
                     keepalive: float = KEEPALIVE_SECONDS) -> AsyncIterator[JobEvent | None]:
    """The events a client should get, then stop at the final state or when `lifetime` runs out.

    Yields None when `keepalive` passes with no event (SSE sends a comment then).
    read_job is an async callable returning the current job record.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + lifetime
    async with hub.follow(job_id, after) as feed:
        if after is None or feed.gap:
            if feed.gap:  # resumed past what the stream still holds: start over from the job as it is now
                feed.discard_backlog()
                feed.last = (0, 0)
            now = await hub.snapshot(feed, read_job)
            yield now  # the job as it is now
            if now.job.state.is_terminal:
                return
        elif (job := await read_job()).state.is_terminal and not feed.has_terminal_backlog():
            # Resumed after the final event was already delivered (or the stream is gone): say so once.
            yield JobEvent(format_event_id(max(feed.last, await hub.last_id(job_id))), "state", job)
            return
        while (left := deadline - loop.time()) > 0:
            item = await feed.next(min(keepalive, left))
            if item is None:
                if deadline - loop.time() > 0:
                    yield None
                continue
            yield item
            if item.job.state.is_terminal:
                return


def sse_frame(item: JobEvent | None, data: dict[str, object]) -> bytes:
    if item is None:
        return b": keepalive\n\n"
    return f"id: {item.id}\nevent: {item.event}\ndata: {json.dumps(data)}\n\n".encode()
