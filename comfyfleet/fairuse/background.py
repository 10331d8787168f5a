"""The API's background duty for fair use: end queued jobs that are past their queue timeout."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from datetime import datetime

from comfyfleet.dispatch.service import Dispatcher
from comfyfleet.fairuse.queue_timeout import sweep_queue_timeouts

log = logging.getLogger(__name__)


async def queue_timeout_sweeper(dispatcher: Dispatcher, default_seconds: int, interval: float,
                                queued: deque[tuple[str, datetime]] | None = None) -> None:
    """Every interval, fail the queued jobs past their deadline (several API replicas may run it: it is idempotent).

    `queued`: (job id, queue deadline) of the jobs this process queued since the last sweep, appended by its
    submit path; the sweep then need not read them to learn their deadlines."""
    deadlines: dict[str, datetime] = {}  # of the jobs queued at the last sweep: each is read once, then when due
    while True:
        while queued:  # on the event loop, like the appends: the sweep's thread is not running now
            job_id, deadline = queued.popleft()
            deadlines[job_id] = deadline
        try:
            expired = await asyncio.to_thread(sweep_queue_timeouts, dispatcher, default_seconds, None, deadlines)
            if expired:
                log.info("queue timeout: failed %d job(s)", len(expired))
        except Exception:  # noqa: BLE001 - Redis down or a bad record must not end the sweeper; it retries
            log.exception("queue timeout sweep failed")
        await asyncio.sleep(interval)
