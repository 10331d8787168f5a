"""CommandBatch on a real redis-server: concurrent commands share round trips, each keeps its own reply or error."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from comfyfleet.luascript import LuaScript
from comfyfleet.redisbatch import CommandBatch
from comfyfleet.redisconn import async_redis
from tests.support.procs import ManagedProcess, free_port


class CountingBatch(CommandBatch):
    """A CommandBatch that records the size of each round trip."""

    def __init__(self, aconn: aioredis.Redis, max_batch: int = 256):
        super().__init__(aconn, max_batch)
        self.sizes: list[int] = []

    async def _round_trip(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        self.sizes.append(len(commands))
        return await super()._round_trip(commands)


@pytest.fixture
async def aconn(redis_server):
    client = async_redis(redis_server.url)
    try:
        yield client
    finally:
        await client.aclose()


async def test_concurrent_commands_share_round_trips_and_keep_their_own_replies(aconn):
    batch = CountingBatch(aconn)
    key = "rb:" + uuid.uuid4().hex
    replies = await asyncio.gather(*(batch.execute_command("RPUSH", key, str(i)) for i in range(200)))
    assert sorted(replies) == list(range(1, 201)), "each command gets its own reply"
    assert await aconn.lrange(key, 0, -1) == [str(i).encode() for i in range(200)], "sent in the order called"
    assert sum(batch.sizes) == 200
    assert len(batch.sizes) < 20, f"200 concurrent commands took {len(batch.sizes)} round trips"


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


async def test_a_caller_that_went_away_is_not_sent(aconn):
    batch = CountingBatch(aconn)
    key = "rb:" + uuid.uuid4().hex
    first = asyncio.create_task(batch.execute_command("RPUSH", key, "first"))
    await asyncio.sleep(0)  # its batch is on the wire
    gone = asyncio.create_task(batch.execute_command("RPUSH", key, "gone"))
    kept = asyncio.create_task(batch.execute_command("RPUSH", key, "kept"))
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.gather(first, kept)
    assert await aconn.lrange(key, 0, -1) == [b"first", b"kept"]


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
        server.stop()
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
