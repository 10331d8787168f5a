"""Redis commands of many concurrent tasks of one event loop, sent together (group commit, issue 14).

redis-py's asyncio client spends ~100 µs of Python per standalone command (a pooled connection taken and
given back, the retry wrapper, its generic packing, one write and one read each), more than Redis spends
running the API's whole submit script. Under load the API has many requests waiting on Redis at once: here
each command joins the batch that goes out next, and a batch is one write of all its commands on the batch's
own connection, whose replies are read in order (hiredis parses them). A command that comes while no batch is
on the wire goes out at once, so a lone request waits for nothing; while one batch is on the wire the next
one fills.

Each command gets its own reply, as Redis sends it (no redis-py response callbacks: PING gives b"PONG"), or
its own error (a script error or NOSCRIPT fails that command only). A connection error fails every command
of its batch and is not retried (a write may have landed); a connection that went stale while idle (a Redis
restart) is replaced before a batch is written on it, as redis-py's pool does.
Not for commands that block (BLPOP, XREAD BLOCK) or change the connection (SELECT, SUBSCRIBE, MULTI).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis._parsers.encoders import Encoder
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

# The most commands one batch carries; the rest wait for the next one (bounds a write's and its replies' memory
# and the time a batch holds its connection).
MAX_BATCH = 256


class Commands(Protocol):
    """What LuaScript needs of a client: the asyncio client and CommandBatch alike."""

    async def execute_command(self, *args: Any, **options: Any) -> Any: ...


class CommandBatch:
    """execute_command for the tasks of one event loop: the commands waiting go out as one write per round trip."""

    def __init__(self, aconn: aioredis.Redis, max_batch: int = MAX_BATCH):
        self.aconn = aconn
        self.max_batch = max_batch
        self._waiting: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._sender: asyncio.Task[None] | None = None
        # The batch's own connection, with the client's settings (address, auth, TLS, database, timeouts).
        self._conn: AbstractConnection = aconn.connection_pool.make_connection()  # type: ignore[no-untyped-call]

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        if options:  # response options (e.g. NEVER_DECODE) are per command: not batched
            return await self.aconn.execute_command(*args, **options)  # type: ignore[no-untyped-call]
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.append((args, future))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send(), name="redis-batch")
        return await future

    async def _send(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:self.max_batch], self._waiting[self.max_batch:]
                live = [(args, future) for args, future in batch if not future.done()]  # a caller gone: not sent
                if not live:
                    continue
                try:
                    replies = await self._round_trip([args for args, _ in live])
                except BaseException as exc:
                    for _, future in live:
                        if not future.done():
                            future.set_exception(exc if isinstance(exc, Exception) else RedisConnectionError(repr(exc)))
                    if not isinstance(exc, Exception):  # cancelled (shutdown): the rest fail too, then stop
                        self._fail_waiting(exc)
                        raise
                    continue
                for (_, future), reply in zip(live, replies, strict=True):
                    if future.done():
                        continue
                    if isinstance(reply, Exception):
                        future.set_exception(reply)
                    else:
                        future.set_result(reply)
        finally:
            self._sender = None

    async def _round_trip(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        conn = self._conn
        parts: list[bytes] = []
        for args in commands:
            pack(args, conn.encoder, parts)
        try:
            # As redis-py's pool checks a connection it hands out: one that went stale while idle (Redis
            # restarted, a proxy dropped it) is replaced before anything is written on it.
            await self.aconn.connection_pool.ensure_connection(conn)
            await conn.send_packed_command(b"".join(parts), check_health=False)
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(await conn.read_response())
                except ResponseError as exc:  # that command's own error; the replies after it are still read
                    replies.append(exc)
            return replies
        except BaseException:
            await conn.disconnect(nowait=True)  # replies half read: the connection cannot be trusted again
            raise

    async def aclose(self) -> None:
        await self._conn.disconnect()

    def _fail_waiting(self, exc: BaseException) -> None:
        waiting, self._waiting = self._waiting, []
        for _, future in waiting:
            if not future.done():
                future.set_exception(RedisConnectionError(f"Redis batch stopped: {exc!r}"))


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
