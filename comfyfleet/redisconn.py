"""The asyncio Redis client every process makes the same way."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.maint_notifications import MaintNotificationsConfig


def async_redis(url: str, **kwargs: Any) -> aioredis.Redis:
    """An asyncio client for url. Without maintenance notifications (a Redis Enterprise feature): redis-py 8 turns
    them on by default ("auto"), and then its asyncio pool skips the check that replaces a dead pooled
    connection, so after a Redis restart the first command on each pooled connection failed."""
    return aioredis.Redis.from_url(url, maint_notifications_config=MaintNotificationsConfig(enabled=False), **kwargs)
