"""The job event transport: every change to a job record, in order, with an id a stream can resume from.

Writer (JobRepo, inside the Lua script of each write: EMIT_LUA) XADDs the event to the job's capped Redis
Stream `{prefix}:events:{job_id}` and PUBLISHes `<job_id> <stream id> <event> <json>` on the job's own
channel, `{prefix}:jobevents:{job_id}` (nobody listens to most of them: a publish without subscribers costs
next to nothing, and no process reads the events of jobs it does not stream). A job's first event, written as
the job is created, goes to its stream only: nobody can follow a job before its id exists. Payloads leave out
the fields at their default (parse_job fills them in).

Readers (SSE, WebSocket, the sync endpoint): `EventHub`, one per process, holds the process's only
pub/sub connection (always subscribed to `{prefix}:jobevents`, on which nothing is published, plus the
channel of every job the process follows) and fans messages out to local `JobFeed`s by job id. A feed
resumes after a given
event id by reading the job's stream (XRANGE), so a client that reconnects to any API replica with its
last event id loses nothing; when the stream no longer reaches back that far (capped, expired) the feed
says so (`gap`) and the caller sends the current job instead. Events never carry the workflow.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis

from comfyfleet.jobs.model import Job, without_defaults
from comfyfleet.jsontext import dumps
from comfyfleet.keys import Keys

log = logging.getLogger(__name__)

# A stream keeps the last ~200 events of a job: enough to replay a reconnect (a 50-step job makes ~60
# events), small enough that 10k recent jobs hold ~200 MB at most. Older gaps are bridged by a snapshot.
STREAM_MAXLEN = 200
# Resume is for reconnects (seconds to minutes); the job record itself lives far longer.
STREAM_TTL_SECONDS = 3600
# A feed's queue: past this many undelivered events the reader is too slow and re-reads from the stream.
FEED_QUEUE_SIZE = 1000

# XADD + EXPIRE + PUBLISH, so the published message carries the id the stream assigned. A Lua function that the
# job record's own scripts (store/jobrepo.py) call after their write, so a change and its event are one round
# trip and one atomic step; ADD_EVENT (JobRepo.publish) is the same on its own.
# record() writes an event to its job's stream; emit() also publishes it on the job's channel (a job's first
# event is only recorded: nobody can follow a job before its id exists).
EMIT_LUA = """
local function record(stream, maxlen, ttl, event, payload)
  local id = redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'event', event, 'job', payload)
  redis.call('EXPIRE', stream, ttl)
  return id
end
local function emit(stream, maxlen, ttl, event, payload, chan, job_id)
  local id = record(stream, maxlen, ttl, event, payload)
  redis.call('PUBLISH', chan, job_id .. ' ' .. id .. ' ' .. event .. ' ' .. payload)
  return id
end
"""
# The six values event_args() gives, as ARGV[first .. first + 5] of a script.
EVENT_ARGC = 6
ADD_EVENT = EMIT_LUA + "return emit(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])\n"


def hub_channel(keys: Keys) -> str:
    """The channel every EventHub stays subscribed to (nothing is published on it): it keeps the hub's one
    connection in subscribe mode while the process follows no job, and counts the hubs of an install."""
    return f"{keys.prefix}:jobevents"


def job_channel(keys: Keys, job_id: str) -> str:
    """The pub/sub channel of one job's events."""
    return f"{hub_channel(keys)}:{job_id}"


def stream_key(keys: Keys, job_id: str) -> str:
    return keys.events(job_id)


def job_payload(job: Job) -> str:
    """The job as an event carries it: everything but the workflow (it can be large)."""
    return payload_of(job.model_dump(mode="json", exclude={"workflow"}))


def payload_of(dump: dict[str, Any]) -> str:
    """job_payload from a job's model_dump(mode="json") without its workflow (a writer that dumped the job for
    its record dumps it once); the fields at their default left out (parse_job fills them in)."""
    return dumps(without_defaults(dump))


def parse_job(payload: str | bytes) -> Job:
    data: dict[str, Any] = json.loads(payload)
    return Job.model_validate({**data, "workflow": {}})


def event_args(keys: Keys, job: Job, event: str, payload: str | None = None) -> list[str | int]:
    """The arguments of EMIT_LUA's emit() for one event of a job (its stream is stream_key(keys, job.id));
    `payload`: the job's job_payload when the caller has it already."""
    if " " in event:
        raise ValueError(f"event names have no spaces: {event!r}")
    return [STREAM_MAXLEN, STREAM_TTL_SECONDS, event, payload or job_payload(job), job_channel(keys, job.id), job.id]


# ---- pure parts: event ids and messages ----

def parse_event_id(text: str | None) -> tuple[int, int] | None:
    """A Redis stream id `ms-seq` as a comparable pair; None for missing or malformed ids."""
    if not text:
        return None
    ms, sep, seq = text.strip().partition("-")
    if not ms.isdigit() or (sep and not seq.isdigit()):
        return None
    return int(ms), int(seq or 0)


def format_event_id(eid: tuple[int, int]) -> str:
    return f"{eid[0]}-{eid[1]}"


@dataclass(frozen=True)
class JobEvent:
    """One event of a job: its stream id, name (state | progress | ...), and the job after the change."""

    id: str
    event: str
    job: Job

    @property
    def key(self) -> tuple[int, int]:
        return parse_event_id(self.id) or (0, 0)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_message(data: bytes | str) -> tuple[str, str, str, str]:
    """`<job_id> <id> <event> <json>` -> (job_id, id, event, json)."""
    text = data.decode() if isinstance(data, bytes) else data
    job_id, event_id, event, payload = text.split(" ", 3)
    return job_id, event_id, event, payload


# ---- readers ----

_RESYNC = object()  # queued to a feed when it may have missed messages: re-read the stream


class JobFeed:
    """The events of one job, in order and without duplicates, from `after` on."""

    def __init__(self, hub: EventHub, job_id: str, after: tuple[int, int]):
        self.hub = hub
        self.job_id = job_id
        self.last = after
        self._queue: asyncio.Queue[object] = asyncio.Queue(maxsize=FEED_QUEUE_SIZE)
        self._backlog: list[JobEvent] = []
        self.gap = False  # set by `replay` when events after `after` may be lost

    def _offer(self, item: object) -> None:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:  # a slow reader: drop its queue and let it re-read the stream
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(_RESYNC)

    def discard_backlog(self) -> None:
        self._backlog.clear()

    def has_terminal_backlog(self) -> bool:
        return any(e.key > self.last and e.job.state.is_terminal for e in self._backlog)

    async def replay(self) -> None:
        """Load what the stream holds after `last` (and note a gap if it was trimmed past it)."""
        events, gap = await self.hub.read_after(self.job_id, self.last)
        self.gap = self.gap or gap
        self._backlog.extend(events)

    async def next(self, timeout: float) -> JobEvent | None:
        """The next event, or None when timeout passes with none."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            while self._backlog:
                item = self._backlog.pop(0)
                if item.key > self.last:
                    self.last = item.key
                    return item
            left = deadline - loop.time()
            if left <= 0:
                return None
            try:
                got = await asyncio.wait_for(self._queue.get(), left)
            except TimeoutError:
                return None
            if got is _RESYNC:
                await self.replay()
            elif isinstance(got, JobEvent):
                self._backlog.append(got)


class EventHub:
    """A process's one pub/sub connection, shared by all its streams: subscribed to the channel of each job that
    some feed of the process follows, from the first feed's start until shortly after the last one ended."""

    def __init__(self, aconn: aioredis.Redis, keys: Keys):
        self.aconn = aconn
        self.keys = keys
        self._feeds: dict[str, set[JobFeed]] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self.reconnects = 0  # how often the subscription was lost and renewed
        self._pubsub: Any = None  # the connected subscription (redis.asyncio PubSub), None while (re)connecting
        # Jobs whose channel is subscribed on the current connection, or asked for: no feed waits for Redis to
        # confirm; once it has, each feed of the job re-reads its stream (an event published before the
        # subscription took effect is in the stream).
        self._subscribed: set[str] = set()
        self._idle: set[str] = set()  # subscribed jobs whose last feed ended: unsubscribed by the hub's loop

    async def start(self, wait_seconds: float = 5.0) -> None:
        """Subscribe in the background; wait a little for it, but start anyway while Redis is down."""
        self._task = asyncio.create_task(self._run(), name="job-event-hub")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._ready.wait()), wait_seconds)

    async def stop(self) -> None:
        """Cancel the subscription's task and wait for it. redis-py can swallow a cancel that lands while it
        reconnects a killed connection (the task then goes on), so the cancel is repeated until the task ends."""
        task = self._task
        if task is None:
            return
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.2)
        with contextlib.suppress(asyncio.CancelledError, redis.RedisError, OSError):
            task.result()

    @property
    def feed_count(self) -> int:
        return sum(len(f) for f in self._feeds.values())

    async def _run(self) -> None:
        prefix_len = len(job_channel(self.keys, ""))
        while True:
            pubsub = self.aconn.pubsub()
            try:
                followed = set(self._feeds)
                await pubsub.subscribe(hub_channel(self.keys), *(job_channel(self.keys, j) for j in followed))
                self._pubsub = pubsub
                self._idle.clear()
                # Every followed job is subscribed from here on (the feeds are resynced below), those whose feed
                # started while the subscribe above was on its way included.
                self._subscribed = set(self._feeds)
                if late := [job_channel(self.keys, j) for j in self._feeds if j not in followed]:
                    await pubsub.subscribe(*late)
                if self._ready.is_set():
                    self.reconnects += 1
                for feeds in self._feeds.values():  # feeds may have missed messages while unsubscribed
                    for feed in feeds:
                        feed._offer(_RESYNC)
                self._ready.set()
                while True:
                    message = await pubsub.get_message(timeout=5.0)
                    if message:
                        kind = message.get("type")
                        if kind == "message":
                            self._dispatch(message["data"])
                        elif kind == "subscribe":  # the job's channel is live: its feeds catch up from the stream
                            for feed in self._feeds.get(_text(message["channel"])[prefix_len:], ()):
                                feed._offer(_RESYNC)
                    if self._idle:
                        await self._unsubscribe_idle(pubsub)
            except (redis.RedisError, OSError) as exc:
                log.warning("job event subscription lost (%s); reconnecting", exc)
                await asyncio.sleep(0.5)
            finally:
                self._pubsub = None
                self._subscribed = set()  # the next connection subscribes every followed job and resyncs its feeds
                with contextlib.suppress(redis.RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _subscribe(self, job_id: str) -> None:
        """Ask for the job's channel (sent, not waited for: Redis's confirmation resyncs the job's feeds)."""
        self._idle.discard(job_id)
        pubsub = self._pubsub
        if job_id in self._subscribed or pubsub is None:  # not connected: the next connection subscribes it
            return
        self._subscribed.add(job_id)
        with contextlib.suppress(redis.RedisError, OSError):  # the hub's loop sees the connection go, and renews it
            await pubsub.subscribe(job_channel(self.keys, job_id))

    async def _unsubscribe_idle(self, pubsub: Any) -> None:
        """Unsubscribe the channels of jobs no feed follows any more (the hub's loop alone unsubscribes, so an
        UNSUBSCRIBE never overtakes the SUBSCRIBE of a feed that started meanwhile)."""
        idle = [j for j in self._idle if j not in self._feeds]
        self._idle.clear()
        self._subscribed.difference_update(idle)
        if idle:
            await pubsub.unsubscribe(*(job_channel(self.keys, j) for j in idle))

    def _dispatch(self, data: bytes) -> None:
        try:
            job_id, event_id, event, payload = parse_message(data)
        except ValueError:
            log.warning("ignoring a malformed job event message: %r", data[:80])
            return
        feeds = self._feeds.get(job_id)
        if not feeds:
            return  # the common case: nobody here follows this job; the JSON is never parsed
        try:
            item = JobEvent(event_id, event, parse_job(payload))
        except ValueError as exc:
            log.warning("ignoring an unreadable event %s of job %s: %s", event_id, job_id, exc)
            return
        for feed in feeds:
            feed._offer(item)

    async def read_after(self, job_id: str, after: tuple[int, int]) -> tuple[list[JobEvent], bool]:
        """Events stored after `after`, and whether some may be missing (the stream was trimmed past it)."""
        key = stream_key(self.keys, job_id)
        first: list[Any] = await self.aconn.xrange(key, "-", "+", count=1) or []
        gap = bool(first) and after != (0, 0) and (parse_event_id(_text(first[0][0])) or (0, 0)) > after
        if not first and after != (0, 0):
            gap = True  # the stream expired or never was: the caller falls back to the job record
        rows: list[Any] = await self.aconn.xrange(key, f"({format_event_id(after)}", "+",
                                                  count=STREAM_MAXLEN * 2) or []
        events = []
        for raw_id, fields in rows:
            try:
                events.append(JobEvent(_text(raw_id), _text(fields[b"event"]), parse_job(fields[b"job"])))
            except (KeyError, ValueError) as exc:
                log.warning("skipping an unreadable stored event of job %s: %s", job_id, exc)
        return events, gap

    async def last_id(self, job_id: str) -> tuple[int, int]:
        """The id of the newest stored event of a job, (0, 0) if none."""
        row = await self._newest_row(job_id)
        return (parse_event_id(_text(row[0])) or (0, 0)) if row else (0, 0)

    async def newest(self, job_id: str) -> JobEvent | None:
        """The newest stored event of a job (its id and the job as that event left it), None if none is readable."""
        row = await self._newest_row(job_id)
        if row is None:
            return None
        raw_id, fields = row
        try:
            return JobEvent(_text(raw_id), _text(fields[b"event"]), parse_job(fields[b"job"]))
        except (KeyError, ValueError) as exc:
            log.warning("unreadable newest event of job %s: %s", job_id, exc)
            return None

    async def _newest_row(self, job_id: str) -> Any:
        """The newest entry of a job's stream as Redis returns it ([id, fields]), None if the stream is empty."""
        rows: list[Any] = await self.aconn.xrevrange(stream_key(self.keys, job_id), "+", "-", count=1) or []
        return rows[0] if rows else None

    async def snapshot(self, feed: JobFeed, read_job: Callable[[], Awaitable[Job]]) -> JobEvent:
        """The job as it is now, as a `state` event whose id the feed goes on after.

        The job and the id come from one stream entry (each record write adds its event in the same atomic
        script), so no event the feed delivers afterwards is older than the snapshot. Reading the record and
        the stream's newest id apart would race a job that moves in between (a snapshot newer than the
        events that follow it). Only when the stream holds nothing (expired, never written) is the record
        read, and the stream asked once more afterwards: an event written meanwhile is at least as new.
        """
        newest = await self.newest(feed.job_id)
        if newest is None:
            job = await read_job()
            newest = await self.newest(feed.job_id)
            if newest is None:
                return JobEvent(format_event_id(feed.last), "state", job)
        feed.last = max(feed.last, newest.key)  # queued events up to the snapshot are in it already
        return JobEvent(newest.id, "state", newest.job)

    @asynccontextmanager
    async def follow(self, job_id: str, after: tuple[int, int] | None = None) -> AsyncIterator[JobFeed]:
        """Follow a job's events.

        With `after` (a resume), the feed replays what is stored after it first. Without, the feed starts
        at the newest stored event: read the job record *after* entering, and it is at least that new.
        """
        start = after if after is not None else (0, 0)
        feed = JobFeed(self, job_id, start)
        self._feeds.setdefault(job_id, set()).add(feed)  # registered before reading, so nothing slips by
        try:
            await self._subscribe(job_id)
            if after is None:
                feed.last = await self.last_id(job_id)
            else:
                await feed.replay()
            yield feed
        finally:
            feeds = self._feeds.get(job_id)
            if feeds is not None:
                feeds.discard(feed)
                if not feeds:
                    del self._feeds[job_id]
                    if job_id in self._subscribed:
                        self._idle.add(job_id)


async def wait_until_final(feed: JobFeed, current: Job, timeout: float) -> Job:
    """Follow the feed until the job is final or timeout passes; returns the latest job seen."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    job = current
    while not job.state.is_terminal and (left := deadline - loop.time()) > 0:
        item = await feed.next(left)
        if item is None:
            break
        job = item.job
    return job
