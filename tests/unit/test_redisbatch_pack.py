"""CommandBatch's packing is byte for byte what redis-py sends for the same command."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from comfyfleet.redisbatch import pack

COMMANDS = [
    ("PING",),
    ("EVALSHA", "0" * 40, 0, '{"a": "b"}', b"\x00\xffbytes", 1.5, 1712345678.123456, -3, 10**20),
    ("SET", "k\u00e9y \u2603", "x" * 70_000),  # non-ASCII text; a value past redis-py's buffer cut-off
    ("HSET", "h", "empty", ""),
]


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: str(a[0]))
def test_pack_is_what_redis_py_sends(args):
    conn = aioredis.Redis().connection_pool.make_connection()
    parts: list[bytes] = []
    pack(args, conn.encoder, parts)
    assert b"".join(parts) == b"".join(conn.pack_command(*args))


def test_text_follows_the_clients_encoding():
    conn = aioredis.Redis(encoding="latin-1").connection_pool.make_connection()
    parts: list[bytes] = []
    pack(("SET", "k", "caf\u00e9"), conn.encoder, parts)
    assert b"".join(parts) == b"".join(conn.pack_command("SET", "k", "caf\u00e9"))
    assert b"caf\xe9" in b"".join(parts)
