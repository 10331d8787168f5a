"""The write-behind of job records from Redis to Firestore.

Redis stays the live truth. JobRepo marks every created or state-changed job in the set `<prefix>:mirror:dirty`;
the mirror (one per install, chosen by a Redis lease) moves a batch of ids to `<prefix>:mirror:inflight`, loads
the records from Redis, writes them in one Firestore batch, and only then forgets the ids. A failed write puts
the ids back and retries with backoff, so a slow or absent Firestore delays the records but never blocks
dispatch and never loses a job's final record (as long as Redis keeps it: result_ttl_seconds).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis

from comfyfleet.jobs.model import Job
from comfyfleet.keys import Keys
from comfyfleet.settings import CommonSettings
from comfyfleet.store.firestore.client import RPC_TIMEOUT_SECONDS, firestore_client, short_error
from comfyfleet.store.firestore.records import job_record
from comfyfleet.store.jobrepo import JobRepo

log = logging.getLogger(__name__)

# Records per Firestore batch: the API allows 500 writes per commit; a record is 1-5 KiB (a workflow summary,
# not the graph), so 100 keeps a commit well under the 10 MiB request limit and each retry small.
BATCH_SIZE = 100
# Idle poll of the dirty set: history in Firestore lags Redis by about this much (SCARD is O(1)).
IDLE_SECONDS = 0.5
# Backoff after a failed write doubles from 0.5 s up to 30 s: a Firestore outage costs one cheap attempt
# per 30 s, and recovery is noticed within that.
BACKOFF_INITIAL_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0
# The mirror lease: one API replica writes at a time, so writes for one job land in order.
LEASE_SECONDS = 15

# Move up to ARGV[1] ids from the dirty set to the in-flight set, atomically; return them.
_CLAIM = """
local ids = redis.call('SPOP', KEYS[1], ARGV[1])
if #ids > 0 then redis.call('SADD', KEYS[2], unpack(ids)) end
return ids
"""
# Take or extend the lease if free or already ours.
_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return holder == ARGV[1] and 2 or 1
end
return 0
"""


def backoff_seconds(failures: int) -> float:
    """Delay before the next write after `failures` failed ones in a row."""
    if failures <= 0:
        return 0.0
    return min(BACKOFF_MAX_SECONDS, BACKOFF_INITIAL_SECONDS * 2.0 ** (failures - 1))


class FirestoreMirror:
    """The write-behind: dirty ids in Redis -> records in Firestore, in batches, with retry."""

    def __init__(self, conn: redis.Redis, keys: Keys, repo: JobRepo, collection: str,
                 client_factory: Callable[[], Any], batch_size: int = BATCH_SIZE):
        self.conn = conn
        self.keys = keys
        self.repo = repo
        self.collection = collection
        self.client_factory = client_factory
        self.batch_size = batch_size
        self.inflight_key = keys.mirror_inflight
        self.lease_key = keys.mirror_lock
        self.holder = uuid.uuid4().hex
        self._claim = conn.register_script(_CLAIM)
        self._lease = conn.register_script(_LEASE)
        self._db: Any = None
        self.failures = 0
        self.written = 0
        self.write_errors = 0
        self.last_success: float | None = None

    @classmethod
    def from_settings(cls, settings: CommonSettings, conn: redis.Redis, repo: JobRepo) -> FirestoreMirror:
        from comfyfleet.firebase_app import firebase_app

        firebase_app(settings)  # a missing project id or key file fails the API's start, not every write
        return cls(conn, Keys(settings.redis_prefix), repo, settings.firestore_collection,
                   lambda: firestore_client(settings))

    def backlog(self) -> int:
        """Jobs whose latest change is not yet in Firestore."""
        with self.conn.pipeline(transaction=False) as pipe:
            pipe.scard(self.keys.dirty)
            pipe.scard(self.inflight_key)
            dirty, inflight = pipe.execute()
        return int(dirty) + int(inflight)

    def take_lease(self) -> bool:
        """Hold the single-writer lease; on first taking it, requeue what a previous holder left in flight."""
        got = int(self._lease(keys=[self.lease_key], args=[self.holder, LEASE_SECONDS * 1000]))
        if got == 1:
            self.requeue()
        return got > 0

    def release_lease(self) -> None:
        if self.conn.get(self.lease_key) == self.holder.encode():
            self.conn.delete(self.lease_key)

    def requeue(self) -> None:
        with self.conn.pipeline() as pipe:
            pipe.sunionstore(self.keys.dirty, [self.keys.dirty, self.inflight_key])
            pipe.delete(self.inflight_key)
            pipe.execute()

    def drain_once(self) -> int:
        """Write one batch; returns how many records were written. Raises (ids requeued) when the write fails."""
        ids = [i.decode() for i in self._claim(keys=[self.keys.dirty, self.inflight_key], args=[self.batch_size])]
        if not ids:
            return 0
        try:
            jobs = [j for j in self.repo.get_many(ids) if j is not None]
            if jobs:
                self._write(jobs)
        except Exception:
            self.requeue()
            raise
        self.conn.srem(self.inflight_key, *ids)
        if len(jobs) < len(ids):
            log.info("firestore mirror: %d job(s) left Redis before they were mirrored", len(ids) - len(jobs))
        return len(jobs)

    def _write(self, jobs: list[Job]) -> None:
        if self._db is None:
            self._db = self.client_factory()
        collection = self._db.collection(self.collection)
        batch = self._db.batch()
        for job in jobs:
            batch.set(collection.document(job.id), job_record(job))
        try:
            # retry=None: the mirror loop is the retry policy (with backoff); a stuck call ends at the timeout.
            batch.commit(retry=None, timeout=RPC_TIMEOUT_SECONDS)
        except Exception:
            self._db = None  # a fresh channel next time, rather than waiting out gRPC's reconnect backoff
            raise

    def step(self) -> float:
        """One turn of the loop (blocking); returns how long to wait before the next."""
        try:
            if not self.take_lease():
                return LEASE_SECONDS / 3
            written = self.drain_once()
        except Exception as exc:  # noqa: BLE001 - any Firestore or Redis failure: back off and try again
            self.failures += 1
            self.write_errors += 1
            delay = backoff_seconds(self.failures)
            log.warning("firestore mirror: write failed (%d in a row, backlog %s), retrying in %.1f s: %s",
                        self.failures, self._safe_backlog(), delay, short_error(exc))
            return delay
        if self.failures:
            log.info("firestore mirror: writing again after %d failed attempt(s)", self.failures)
        self.failures = 0
        if written:
            self.written += written
            self.last_success = time.time()
            return 0.0  # more may be waiting
        return IDLE_SECONDS

    def _safe_backlog(self) -> str:
        try:
            return str(self.backlog())
        except redis.RedisError:
            return "unknown"

    async def run_forever(self) -> None:
        """The API lifespan task: never raises except CancelledError; all blocking work runs in a thread."""
        try:
            while True:
                delay = await asyncio.to_thread(self.step)
                await asyncio.sleep(delay)
        finally:
            try:
                await asyncio.to_thread(self.release_lease)
            except redis.RedisError as exc:
                log.warning("firestore mirror: could not release its lease: %s", exc)
