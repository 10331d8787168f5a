"""The API's background duty for fair use: end queued jobs that are past their queue timeout."""

from __future__ import annotations

import asyncio
import logging

from comfyfleet.dispatch.service import Dispatcher
from comfyfleet.fairuse.queue_timeout import sweep_queue_timeouts

log = logging.getLogger(__name__)


async def queue_timeout_sweeper(dispatcher: Dispatcher, default_seconds: int, interval: float) -> None:
    """Every interval, fail the queued jobs past their deadline (several API replicas may run it: it is idempotent).
    The first sweep reads every queued job (and indexes it); the later ones only the jobs the index says are due."""
    full = True
    while True:
        try:
            expired = await asyncio.to_thread(sweep_queue_timeouts, dispatcher, default_seconds, None, full)
            full = False
            if expired:
                log.info("queue timeout: failed %d job(s)", len(expired))
        except Exception:  # noqa: BLE001 - Redis down or a bad record must not end the sweeper; it retries
            log.exception("queue timeout sweep failed")
        await asyncio.sleep(interval)
