"""CommandBatch on a real redis-server: concurrent commands share writes, a write never waits for the replies of
earlier ones, each command keeps its own reply or error."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection

from comfyfleet.luascript import LuaScript
from comfyfleet.redisbatch import CommandBatch
from comfyfleet.redisconn import async_redis
from tests.support.procs import ManagedProcess, free_port


class CountingBatch(CommandBatch):
    """A CommandBatch that records the size of each write."""

    def __init__(self, aconn: aioredis.Redis, max_batch: int = 256):
        super().__init__(aconn, max_batch)
        self.sizes: list[int] = []

    async def _send(self, conn: AbstractConnection, commands: list[tuple[Any, ...]]) -> None:
        self.sizes.append(len(commands))
        await super()._send(conn, commands)


# Keeps Redis busy for ARGV[1] milliseconds (its own clock), then answers 'done'.
BUSY = LuaScript("""
local function now() local t = redis.call('TIME') return t[1] * 1000 + t[2] / 1000 end
local stop = now() + tonumber(ARGV[1])
while now() < stop do end
return 'done'
""")


@pytest.fixture
async def aconn(redis_server):
    client = async_redis(redis_server.url)
    try:
        yield client
    finally:
        await client.aclose()


async def test_concurrent_commands_share_writes_and_keep_their_own_replies(aconn):
    batch = CountingBatch(aconn)
    key = "rb:" + uuid.uuid4().hex
    replies = await asyncio.gather(*(batch.execute_command("RPUSH", key, str(i)) for i in range(200)))
    assert sorted(replies) == list(range(1, 201)), "each command gets its own reply"
    assert await aconn.lrange(key, 0, -1) == [str(i).encode() for i in range(200)], "sent in the order called"
    assert sum(batch.sizes) == 200
    assert len(batch.sizes) < 20, f"200 concurrent commands took {len(batch.sizes)} writes"


async def test_a_lone_command_goes_out_at_once(aconn):
    batch = CountingBatch(aconn)
    for _ in range(3):
        assert await batch.execute_command("PING") == b"PONG"  # as Redis sends it
    assert batch.sizes == [1, 1, 1]


async def test_a_batch_is_bounded(aconn):
    batch = CountingBatch(aconn, max_batch=8)
    await asyncio.gather(*(batch.execute_command("PING") for _ in range(50)))
    assert max(batch.sizes) <= 8 and sum(batch.sizes) == 50


async def test_a_command_error_fails_that_command_only(aconn):
    batch = CountingBatch(aconn)
    key = "rb:" + uuid.uuid4().hex
    await aconn.set(key + ":s", "text")
    results = await asyncio.gather(
        batch.execute_command("INCR", key), batch.execute_command("INCR", key + ":s"),  # not an integer
        batch.execute_command("INCR", key), return_exceptions=True)
    assert results[0] == 1 and results[2] == 2
    assert isinstance(results[1], redis.ResponseError)
    alone = CountingBatch(aconn)  # a lone command's error too
    with pytest.raises(redis.ResponseError):
        await alone.execute_command("INCR", key + ":s")


async def test_a_script_runs_through_a_batch_and_is_loaded_on_a_miss(aconn):
    script = LuaScript("return {'n', ARGV[1]} -- " + uuid.uuid4().hex)  # a script this server never saw
    batch = CountingBatch(aconn)
    replies = await asyncio.gather(*(script.run_async(batch, [], [str(i)]) for i in range(20)))
    assert [r[1] for r in replies] == [str(i).encode() for i in range(20)]
    assert await aconn.script_exists(script.sha) == [True]


async def test_a_write_does_not_wait_for_the_replies_of_earlier_writes(aconn):
    batch = CountingBatch(aconn)
    await batch.execute_command("PING")  # connected
    busy = asyncio.create_task(BUSY.run_async(batch, [], ["400"]))
    await asyncio.sleep(0.1)  # written (EVALSHA, then EVAL on this server's first sight of it): Redis runs it
    writes = len(batch.sizes)
    ping = asyncio.create_task(batch.execute_command("PING"))
    await asyncio.sleep(0.1)
    assert not busy.done()
    assert len(batch.sizes) == writes + 1, "the PING went out while the script's reply was still to come"
    assert await busy == b"done" and await ping == b"PONG"


async def test_a_caller_that_went_away_is_not_sent(aconn):
    batch = CountingBatch(aconn)
    key = "rb:" + uuid.uuid4().hex
    await batch.execute_command("RPUSH", key, "first")
    gone = asyncio.create_task(batch.execute_command("RPUSH", key, "gone"))
    kept = asyncio.create_task(batch.execute_command("RPUSH", key, "kept"))
    await asyncio.sleep(0)  # both called; their write is the next thing the loop runs
    gone.cancel()
    await kept
    assert await aconn.lrange(key, 0, -1) == [b"first", b"kept"]
    assert batch.sizes == [1, 1]


async def test_a_caller_that_goes_away_after_its_write_leaves_the_replies_in_order(aconn):
    batch = CountingBatch(aconn)
    busy = asyncio.create_task(BUSY.run_async(batch, [], ["200"]))
    await asyncio.sleep(0.05)
    gone = asyncio.create_task(batch.execute_command("ECHO", "gone"))
    kept = asyncio.create_task(batch.execute_command("ECHO", "kept"))
    await asyncio.sleep(0.05)  # both written, behind the script
    gone.cancel()
    assert await kept == b"kept", "the cancelled caller's reply was read and dropped, not given to the next"
    assert await busy == b"done"
    assert await batch.execute_command("ECHO", "after") == b"after"


async def test_replies_that_do_not_come_within_the_socket_timeout_fail_and_the_pipe_recovers(redis_server):
    client = async_redis(redis_server.url, socket_timeout=0.2)
    batch = CountingBatch(client)
    try:
        await BUSY.run_async(batch, [], ["1"])  # loaded, connected
        loop = asyncio.get_running_loop()
        started = loop.time()
        results = await asyncio.gather(BUSY.run_async(batch, [], ["900"]), batch.execute_command("PING"),
                                       return_exceptions=True)
        waited = loop.time() - started
        assert all(isinstance(r, redis.TimeoutError) for r in results), results
        assert waited < 0.7, f"failed after {waited:.2f} s; the socket timeout is 0.2 s"
        await asyncio.sleep(0.9)  # the script ends
        for _ in range(3):  # replies that come in time, on a new connection; no watchdog fires between them
            assert await batch.execute_command("PING") == b"PONG"
            await asyncio.sleep(0.15)
        assert await batch.execute_command("ECHO", "x") == b"x"
    finally:
        await batch.aclose()
        await client.aclose()


async def test_a_lost_connection_fails_its_batch_and_a_restarted_redis_is_used_at_once(tmp_path):
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    argv = [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save",
            "", "--appendonly", "no", "--dir", str(tmp_path)]
    client, probe = async_redis(url, socket_connect_timeout=1), async_redis(url, socket_connect_timeout=1)
    batch = CountingBatch(client)
    server = ManagedProcess(argv, log_path=tmp_path / "redis.log")
    try:
        await _until(lambda: batch.execute_command("PING"))  # the batch's connection is open, then idle
        server.stop()
        server = ManagedProcess(argv, log_path=tmp_path / "redis2.log")
        await _until(probe.ping)
        assert await batch.execute_command("SET", "k", "v") == b"OK", "the stale connection was replaced first"
        busy = asyncio.create_task(BUSY.run_async(batch, [], ["2000"]))
        await asyncio.sleep(0.2)
        behind = asyncio.create_task(batch.execute_command("PING"))
        await asyncio.sleep(0.05)  # written behind the script
        server.kill()  # the connection drops with both in flight
        results = await asyncio.gather(busy, behind, return_exceptions=True)
        assert all(isinstance(r, redis.ConnectionError) for r in results), results
        results = await asyncio.gather(*(batch.execute_command("PING") for _ in range(5)), return_exceptions=True)
        assert all(isinstance(r, redis.ConnectionError) for r in results), results
        server = ManagedProcess(argv, log_path=tmp_path / "redis3.log")
        await _until(probe.ping)
        assert await batch.execute_command("GET", "k") is None  # a new server (no persistence), reached at once
    finally:
        server.stop()
        await client.aclose()
        await probe.aclose()
        await batch.aclose()


async def _until(call: Any, attempts: int = 100) -> None:
    for _ in range(attempts):  # bounded: the server takes a moment to listen
        try:
            await call()
            return
        except redis.ConnectionError:
            await asyncio.sleep(0.05)
    raise AssertionError("Redis did not answer")
