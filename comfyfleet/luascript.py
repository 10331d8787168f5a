"""A Lua script that runs from the blocking and the asyncio Redis client alike: EVALSHA, loaded on a miss.

redis-py's `register_script` binds a script to one client; the submit path runs the same scripts from the
API's asyncio client and from the blocking client of the operator and the tests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import redis
from redis.exceptions import NoScriptError

from comfyfleet.redisbatch import Commands

Arg = str | bytes | int | float


class LuaScript:
    def __init__(self, source: str):
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()  # Redis names scripts so

    def __call__(self, conn: redis.Redis, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        try:
            return conn.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:  # a new or flushed server: EVAL also caches it for the next EVALSHA
            return conn.eval(self.source, len(keys), *keys, *args)

    async def run_async(self, aconn: Commands, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """On an asyncio client, or on a CommandBatch of one (redisbatch.py)."""
        try:
            return await aconn.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await aconn.execute_command("EVAL", self.source, len(keys), *keys, *args)
