"""Redis commands of many concurrent tasks of one event loop, pipelined on one connection (issue 14).

redis-py's asyncio client spends ~100 µs of Python per standalone command (a pooled connection taken and
given back, the retry wrapper, its generic packing, one write and one read each), more than Redis spends
running the API's whole submit script. Here every command goes on the pipe's own connection: the commands
called while the event loop runs one round of callbacks go out together in one write, at once, without waiting
for the replies of earlier writes, and one reader task takes the replies in order (hiredis parses them), as
ioredis and Bull use a Redis connection. A lone request waits for nothing; under load the API never idles
waiting for Redis to answer a batch before it sends the next one (with one batch in flight at a time, each
API process waited while Redis ran its batch, and the machine idled: 7-8 % of the CPU in bench/frontdoor.py
runs with 2 processes).

Each command gets its own reply, as Redis sends it (no redis-py response callbacks: PING gives b"PONG"), or
its own error (a script error or NOSCRIPT fails that command only). A connection error fails every command
written and not yet answered, none of which is retried (a write may have landed); commands not yet written go
out on a new connection. A connection that went stale while nothing was in flight (a Redis restart) is
replaced before anything is written on it, as redis-py's pool does.
Not for commands that block (BLPOP, XREAD BLOCK) or change the connection (SELECT, SUBSCRIBE, MULTI).
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis._parsers.encoders import Encoder
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

# The most commands one write carries; the rest go in the next one (bounds a write's memory).
MAX_BATCH = 256


class Commands(Protocol):
    """What LuaScript needs of a client: the asyncio client and CommandBatch alike."""

    async def execute_command(self, *args: Any, **options: Any) -> Any: ...


class CommandBatch:
    """execute_command for the tasks of one event loop, pipelined on one connection."""

    def __init__(self, aconn: aioredis.Redis, max_batch: int = MAX_BATCH):
        self.aconn = aconn
        self.max_batch = max_batch
        self._waiting: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []  # called, not yet written
        self._sent: deque[asyncio.Future[Any]] = deque()  # written, in order, replies still to read
        self._writer: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._replies = 0  # read so far: the watchdog's measure of progress
        self._watchdog: asyncio.TimerHandle | None = None
        self._timed_out: asyncio.Task[None] | None = None  # the watchdog's drop, held while it runs
        self._conn = self._new_connection()  # the pipe's own

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        if options:  # response options (e.g. NEVER_DECODE) are per command: not pipelined
            return await self.aconn.execute_command(*args, **options)  # type: ignore[no-untyped-call]
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.append((args, future))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write(), name="redis-pipe-writer")
        return await future

    async def _write(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:self.max_batch], self._waiting[self.max_batch:]
                live = [(args, future) for args, future in batch if not future.done()]  # a caller gone: not sent
                if not live:
                    continue
                conn = self._conn
                try:
                    if not self._sent:  # nothing in flight: the connection may have gone stale while idle
                        await self.aconn.connection_pool.ensure_connection(conn)
                    self._sent.extend(future for _, future in live)
                    if self._reader is None:
                        self._reader = asyncio.create_task(self._read(conn), name="redis-pipe-reader")
                    await self._send(conn, [args for args, _ in live])
                except Exception as exc:  # noqa: BLE001 - each caller gets the error as its command's
                    for _, future in live:  # not yet in flight when connecting failed
                        _fail_one(future, exc)
                    await self._lose_connection(exc)
        except BaseException as exc:  # cancelled (shutdown): what waits or is in flight fails too, then stop
            self._fail_waiting(exc)
            await self._lose_connection(exc)
            raise
        finally:
            self._writer = None

    async def _send(self, conn: AbstractConnection, commands: list[tuple[Any, ...]]) -> None:
        """One write of these commands."""
        parts: list[bytes] = []
        for args in commands:
            pack(args, conn.encoder, parts)
        await conn.send_packed_command(b"".join(parts), check_health=False)

    async def _read(self, conn: AbstractConnection) -> None:
        # No timer per reply (redis-py's read timeout sets one up and cancels it for every read): a watchdog
        # drops the connection instead when a socket timeout passes with replies due and none read.
        self._arm(conn)
        try:
            while self._sent:
                try:
                    reply: Any = await conn.read_response(timeout=math.inf)
                except ResponseError as exc:  # that command's own error; the replies after it are still read
                    reply = exc
                self._replies += 1
                future = self._sent.popleft()
                if future.done():  # its caller went away
                    continue
                if isinstance(reply, Exception):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except asyncio.CancelledError:
            raise  # by _lose_connection, which failed what was in flight, or at shutdown
        except Exception as exc:  # noqa: BLE001 - every command in flight gets the error
            await self._lose_connection(exc)
        finally:
            if self._reader is asyncio.current_task():
                self._reader = None
                self._disarm()

    def _arm(self, conn: AbstractConnection) -> None:
        """The watchdog's next look at conn's reader, a socket timeout from now."""
        if conn.socket_timeout:
            self._watchdog = asyncio.get_running_loop().call_later(conn.socket_timeout, self._look, conn,
                                                                   self._replies)

    def _disarm(self) -> None:
        """No more looks: the reader they watch is gone."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _look(self, conn: AbstractConnection, seen: int) -> None:
        self._watchdog = None
        if conn is not self._conn or self._reader is None:  # that reader is gone
            return
        if self._replies == seen and self._sent:  # as redis-py's read timeout: the connection is dropped
            error = RedisTimeoutError(f"no reply from Redis in {conn.socket_timeout} s")
            self._timed_out = asyncio.create_task(self._lose_connection(error), name="redis-pipe-timeout")
            return
        self._arm(conn)

    async def _lose_connection(self, exc: BaseException) -> None:
        """Fail every command in flight (replies half read: the connection cannot be trusted again) and drop the
        connection; the next write goes on a new one. A new connection object, not the old one reopened: the
        cancelled reader still closes the connection it was reading from (redis-py does on any error)."""
        reader, self._reader = self._reader, None
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
        self._disarm()  # the dropped reader's watchdog, which would otherwise fire on (and drop) its successor's
        sent, self._sent = self._sent, deque()
        for future in sent:
            _fail_one(future, exc)
        old, self._conn = self._conn, self._new_connection()
        await old.disconnect(nowait=True)

    def _new_connection(self) -> AbstractConnection:
        """A connection with the client's settings (address, auth, TLS, database, timeouts)."""
        return self.aconn.connection_pool.make_connection()  # type: ignore[no-untyped-call,no-any-return]

    async def aclose(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
        if self._reader is not None:
            self._reader.cancel()
        self._fail_waiting(RedisConnectionError("Redis pipe closed"))
        await self._conn.disconnect()

    def _fail_waiting(self, exc: BaseException) -> None:
        waiting, self._waiting = self._waiting, []
        sent, self._sent = self._sent, deque()
        for future in [f for _, f in waiting] + list(sent):
            _fail_one(future, RedisConnectionError(f"Redis pipe stopped: {exc!r}"))


def _fail_one(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc if isinstance(exc, Exception) else RedisConnectionError(repr(exc)))


def pack(args: tuple[Any, ...], encoder: Encoder, parts: list[bytes]) -> None:
    """Append a command in RESP (an array of bulk strings) to parts, each argument as redis-py's encoder sends
    it; bytes, and text with the default UTF-8, without the encoder's per-argument checks."""
    parts.append(b"*%d\r\n" % len(args))
    utf8 = encoder.encoding == "utf-8" and encoder.encoding_errors == "strict"
    encode: Callable[[Any], bytes] = encoder.encode
    for arg in args:
        kind = type(arg)
        if kind is bytes:
            data = arg
        elif kind is str and utf8:
            data = arg.encode()
        elif kind is int:  # what the encoder writes for an int (repr), without its checks
            data = b"%d" % arg
        else:
            data = encode(arg)
        parts.append(b"$%d\r\n" % len(data))
        parts.append(data)
        parts.append(b"\r\n")
