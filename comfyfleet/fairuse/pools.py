"""Which pools exist: a job naming a pool nobody serves or declares is refused at submit (it would wait forever).

A pool exists when an endpoint in the registry names it (static, admin-added or published by the operator)
or when the operator declared it recently: a ComfyUIWorker scaled to zero has no endpoints but is real, so
the operator re-declares each pool on every reconcile pass and a declaration lapses after DECLARATION_TTL.
"""

from __future__ import annotations

import time

import redis

from comfyfleet.dispatch.service import Dispatcher
from comfyfleet.fairuse import text
from comfyfleet.keys import Keys

# Several reconcile intervals (5 s by default): a restarting operator must not make its pools vanish.
DECLARATION_TTL_SECONDS = 600.0


def declared_key(keys: Keys) -> str:
    return f"{keys.prefix}:pools:declared"


def declare_pool(dispatcher: Dispatcher, pool: str, now: float | None = None) -> None:
    """Called by the operator for each ComfyUIWorker on every reconcile pass."""
    dispatcher.conn.zadd(declared_key(dispatcher.keys), {pool: time.time() if now is None else now})


def known_pools(dispatcher: Dispatcher, now: float | None = None) -> set[str]:
    conn: redis.Redis = dispatcher.conn
    now = time.time() if now is None else now
    key = declared_key(dispatcher.keys)
    conn.zremrangebyscore(key, "-inf", now - DECLARATION_TTL_SECONDS)
    declared = {text(p) for p in conn.zrange(key, 0, -1)}
    return declared | {e.pool for e in dispatcher.registry.endpoints()}
