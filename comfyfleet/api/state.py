"""What the API process holds for its lifetime: settings, Redis clients, dispatcher, auth, store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio as aioredis

from comfyfleet.api.auth import Authenticator
from comfyfleet.api.errors import ApiError
from comfyfleet.api.events import StreamGate
from comfyfleet.api.schemas import JobPublic
from comfyfleet.api.tokens import JobTokens
from comfyfleet.dispatch.service import Dispatcher
from comfyfleet.fairuse.limits import FairUse, Limits
from comfyfleet.jobs.model import Job
from comfyfleet.jobs.validation import TemplateChecks
from comfyfleet.redisbatch import CommandBatch
from comfyfleet.settings import ApiSettings
from comfyfleet.store.jobevents import EventHub
from comfyfleet.store.jobrepo import decode_job, is_quarantined
from comfyfleet.store.outputs import OutputStore


@dataclass
class AppState:
    settings: ApiSettings
    conn: redis.Redis
    aconn: aioredis.Redis
    dispatcher: Dispatcher
    authenticator: Authenticator
    store: OutputStore
    hub: EventHub  # the process's one subscription to job events (started by the app's lifespan)
    streams: StreamGate  # open SSE/WebSocket streams per user
    batch: CommandBatch = field(init=False)  # the requests' Redis commands, pipelined on one connection
    job_tokens: JobTokens | None = None  # set by the lifespan once the shared secret is read from Redis
    _catalogs: dict[str | None, tuple[float, dict[str, Any] | None]] = field(default_factory=dict)
    # Catalog reads in flight, by pool: requests that miss the cache meanwhile wait for the same read.
    catalog_loads: dict[str | None, asyncio.Future[dict[str, Any] | None]] = field(default_factory=dict)
    template_checks: TemplateChecks = field(default_factory=TemplateChecks)  # templated graphs, validated per shape
    _pools: tuple[float, frozenset[str]] = (0.0, frozenset())
    _fair_use: FairUse | None = None

    def __post_init__(self) -> None:
        self.batch = CommandBatch(self.aconn)

    @property
    def tokens(self) -> JobTokens:
        if self.job_tokens is None:  # Redis was unreachable since the start (the lifespan keeps trying)
            raise ApiError(503, "the API is starting: Redis is not reachable yet", headers={"Retry-After": "2"})
        return self.job_tokens

    async def read_job(self, job_id: str) -> Job | None:
        """The stored job, read on the event loop (the asyncio client: no thread hop); a record that cannot be
        read comes back failed and is marked so in Redis by the repo (in a thread), as JobRepo.get does."""
        raw = await self.aconn.hgetall(self.dispatcher.keys.job(job_id))
        if not raw:
            return None
        job = decode_job(job_id, raw)
        if is_quarantined(job):
            await asyncio.to_thread(self.dispatcher.repo.quarantine, job)
        return job

    def public(self, job: Job) -> JobPublic:
        """The job as the API returns it, with its access token and browser-loadable output URLs."""
        return JobPublic.of(job, self.tokens)

    @property
    def fair_use(self) -> FairUse:
        """The fair-use limits of these settings (built once: it holds the queue keys and the script)."""
        if self._fair_use is None:
            s, dispatcher = self.settings, self.dispatcher
            limits = Limits(in_flight_per_user=s.max_jobs_in_flight_per_user,
                            submissions_per_minute=s.max_submissions_per_minute_per_user,
                            queue_depth=s.max_queue_depth, queue_depth_per_pool=s.max_queue_depth_per_pool)
            self._fair_use = FairUse(self.conn, dispatcher.keys, limits, dispatcher.repo.get_many)
        return self._fair_use

    def pool_recently_known(self, pool: str) -> bool:
        """Whether `pool` was among the known pools read in the last POOLS_TTL_SECONDS."""
        until, pools = self._pools
        return pool in pools and until > time.monotonic()

    def remember_pools(self, pools: set[str]) -> None:
        self._pools = (time.monotonic() + POOLS_TTL_SECONDS, frozenset(pools))

    def cached_catalog_hit(self, pool: str | None) -> dict[str, Any] | None:
        """The cached catalog of a pool if it is still fresh, else None (no I/O: callable on the event loop)."""
        hit = self._catalogs.get(pool)
        return hit[1] if hit is not None and hit[0] > time.monotonic() else None

    def cached_catalog(self, pool: str | None, load: Callable[[], dict[str, Any] | None]) -> dict[str, Any] | None:
        """The node catalog for a pool, reloaded at most every CATALOG_TTL_SECONDS (it is ~1 MB on real ComfyUI)."""
        now = time.monotonic()
        hit = self._catalogs.get(pool)
        if hit is not None and hit[0] > now:
            return hit[1]
        catalog = load()
        # Only a found catalog is cached: with no ready worker yet, look again on the next request.
        if catalog is not None:
            self._catalogs[pool] = (now + CATALOG_TTL_SECONDS, catalog)
        return catalog


# A known pool is accepted from memory this long: pools vanish only when the operator stops declaring them
# (fairuse/pools.py DECLARATION_TTL_SECONDS, 10 min) or their last endpoint goes, so a few seconds late is
# harmless; an unknown name is always looked up again.
POOLS_TTL_SECONDS = 5.0
# Pods refresh their catalog every ~minute; 30 s keeps validation current without parsing it per request.
CATALOG_TTL_SECONDS = 30.0
