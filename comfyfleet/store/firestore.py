"""Durable job records in Firestore: a write-behind mirror of Redis, and the history served from it.

Redis stays the live truth. JobRepo marks every created or state-changed job in the set `<prefix>:mirror:dirty`;
the mirror (one per install, chosen by a Redis lease) moves a batch of ids to `<prefix>:mirror:inflight`, loads
the records from Redis, writes them in one Firestore batch, and only then forgets the ids. A failed write puts
the ids back and retries with backoff, so a slow or absent Firestore delays the records but never blocks
dispatch and never loses a job's final record (as long as Redis keeps it: result_ttl_seconds).

Documents live at `<collection>/<job id>` with top-level fields only (owner, state, created_ts, ...), so the
history query is `owner == uid [and created_ts < before] order by created_ts desc limit n`: one equality, one
range on the order field. Real Firestore needs a composite index for it (owner ASC, created_ts DESC).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from comfyfleet.jobs.model import ErrorCode, Job, JobError, JobState, OutputFile, Progress
from comfyfleet.keys import Keys
from comfyfleet.settings import CommonSettings
from comfyfleet.store.history import HistoryPage, RedisHistory
from comfyfleet.store.jobrepo import JobRepo

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
# Records per Firestore batch: the API allows 500 writes per commit; a record is 1-5 KiB (a workflow summary,
# not the graph), so 100 keeps a commit well under the 10 MiB request limit and each retry small.
BATCH_SIZE = 100
# Idle poll of the dirty set: history in Firestore lags Redis by about this much (SCARD is O(1)).
IDLE_SECONDS = 0.5
# Backoff after a failed write doubles from 0.5 s up to 30 s: a Firestore outage costs one cheap attempt
# per 30 s, and recovery is noticed within that.
BACKOFF_INITIAL_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0
# One commit or query must answer within this, or it counts as failed (the records stay queued in Redis).
RPC_TIMEOUT_SECONDS = 10.0
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


# ---- pure parts: the record shape ----

def workflow_summary(workflow: dict[str, Any]) -> dict[str, Any]:
    """What the record keeps of the graph: size, node types and a hash (the graph itself stays in Redis)."""
    types = sorted({str(n.get("class_type")) for n in workflow.values() if isinstance(n, dict)})
    canonical = json.dumps(workflow, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return {"nodes": len(workflow), "class_types": types, "hash": hashlib.sha256(canonical.encode()).hexdigest()}


def job_record(job: Job) -> dict[str, Any]:
    """The Firestore document for a job: top-level scalar fields, so every query stays simple."""
    error = None
    if job.error is not None:
        # details can hold nested lists (node errors); Firestore forbids arrays in arrays, so keep them as JSON.
        error = {"code": job.error.code.value, "message": job.error.message,
                 "details_json": json.dumps(job.error.details, default=str) if job.error.details else None}
    return {
        "schema": SCHEMA_VERSION,
        "job_id": job.id,
        "owner": job.owner,
        "state": job.state.value,
        "source": job.source,
        "template": job.template,
        "workflow": workflow_summary(job.workflow),
        "params": job.params,
        "priority": job.priority,
        "pool": job.pool,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "timeout_seconds": job.timeout_seconds,
        "progress": job.progress.model_dump(),
        "error": error,
        "outputs": [o.model_dump() for o in job.outputs],
        "worker": job.worker,
        "cancel_requested": job.cancel_requested,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "dispatched_at": job.dispatched_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        # The paging cursor: the same float the API hands out as next_before, compared exactly.
        "created_ts": job.created_at.timestamp(),
    }


def job_from_record(doc: dict[str, Any]) -> Job:
    """A Job back from its record (the workflow graph is not kept: an empty graph stands in)."""
    raw_error = doc.get("error")
    error = None
    if raw_error:
        details = json.loads(raw_error["details_json"]) if raw_error.get("details_json") else None
        error = JobError(code=ErrorCode(raw_error["code"]), message=raw_error["message"], details=details)
    return Job(
        id=doc["job_id"], owner=doc["owner"], workflow={}, template=doc.get("template"),
        params=doc.get("params") or {}, priority=doc.get("priority", 5), pool=doc.get("pool"),
        state=JobState(doc["state"]), progress=Progress(**(doc.get("progress") or {})),
        attempts=doc.get("attempts", 0), max_attempts=doc.get("max_attempts", 3),
        timeout_seconds=doc.get("timeout_seconds", 300), error=error,
        outputs=[OutputFile(**o) for o in doc.get("outputs") or []], source=doc.get("source", "api"),
        worker=doc.get("worker"), cancel_requested=doc.get("cancel_requested", False),
        created_at=doc["created_at"], updated_at=doc.get("updated_at") or doc["created_at"],
        dispatched_at=doc.get("dispatched_at"), started_at=doc.get("started_at"), finished_at=doc.get("finished_at"),
    )


def backoff_seconds(failures: int) -> float:
    """Delay before the next write after `failures` failed ones in a row."""
    if failures <= 0:
        return 0.0
    return min(BACKOFF_MAX_SECONDS, BACKOFF_INITIAL_SECONDS * 2 ** (failures - 1))


# ---- Firestore I/O ----

def firestore_client(settings: CommonSettings) -> Any:
    """A new Firestore client on the shared firebase-admin app (emulator-aware through FIRESTORE_EMULATOR_HOST)."""
    from google.cloud import firestore

    from comfyfleet.firebase_app import firebase_app

    app = firebase_app(settings)
    return firestore.Client(project=app.project_id, credentials=app.credential.get_credential())


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
                        self.failures, self._safe_backlog(), delay, _short(exc))
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


class MirrorCollector(Collector):
    """Prometheus figures of the write-behind: backlog (read from Redis at scrape time), writes, failures."""

    def __init__(self, mirror: FirestoreMirror):
        self.mirror = mirror

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield GaugeMetricFamily("comfyfleet_firestore_backlog", "Job records waiting to be written to Firestore",
                                value=self.mirror.backlog())
        yield CounterMetricFamily("comfyfleet_firestore_records_written", "Job records written to Firestore",
                                  value=self.mirror.written)
        yield CounterMetricFamily("comfyfleet_firestore_write_failures", "Failed Firestore batch writes",
                                  value=self.mirror.write_errors)
        if self.mirror.last_success is not None:
            yield GaugeMetricFamily("comfyfleet_firestore_last_write_timestamp_seconds",
                                    "When a batch was last written to Firestore", value=self.mirror.last_success)


class FirestoreHistory:
    """History from Firestore; records still in Redis are shown in their fresher Redis state."""

    def __init__(self, client_factory: Callable[[], Any], collection: str, repo: JobRepo):
        self.client_factory = client_factory
        self.collection = collection
        self.repo = repo

    @classmethod
    def from_settings(cls, settings: CommonSettings, repo: JobRepo) -> FirestoreHistory:
        return cls(lambda: _shared_client(settings), settings.firestore_collection, repo)

    def page(self, owner: str, limit: int, before: float | None = None) -> HistoryPage:
        from google.cloud.firestore import FieldFilter, Query

        try:
            query = self.client_factory().collection(self.collection).where(filter=FieldFilter("owner", "==", owner))
            if before is not None:
                query = query.where(filter=FieldFilter("created_ts", "<", before))
            query = query.order_by("created_ts", direction=Query.DESCENDING).limit(limit)
            docs = [d.to_dict() for d in query.stream(retry=None, timeout=RPC_TIMEOUT_SECONDS)]
        except Exception as exc:  # noqa: BLE001 - an unreachable Firestore degrades to what Redis still holds
            log.warning("job history: Firestore query failed, serving from Redis: %s", _short(exc))
            return RedisHistory(self.repo).page(owner, limit, before)
        stored = [job_from_record(d) for d in docs if d]
        live = self.repo.get_many([j.id for j in stored])
        jobs = [fresh if fresh is not None else old for old, fresh in zip(stored, live, strict=True)]
        # The cursor is the stored float itself, so the next page's `created_ts < before` is exact.
        cursor = docs[-1].get("created_ts") if len(docs) == limit and docs[-1] else None
        return HistoryPage(jobs=jobs, next_before=cursor)


_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


def _shared_client(settings: CommonSettings) -> Any:
    """One Firestore client per configuration for the API's reads (clients are thread-safe)."""
    from comfyfleet.firebase_app import app_name

    key = app_name(settings)
    with _clients_lock:
        if key not in _clients:
            _clients[key] = firestore_client(settings)
        return _clients[key]


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 300 else text[:300] + "..."
