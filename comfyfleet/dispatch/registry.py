"""The registry of ComfyUI endpoints in Redis: who exists, who is healthy, what models, who is leased."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import redis
from pydantic import BaseModel, Field

from comfyfleet.dispatch.selection import Candidate
from comfyfleet.keys import Keys, as_text

# Compare-and-delete / compare-and-extend, so a dispatcher never frees or renews a lease it no longer holds.
# KEYS: the endpoint's lease, its next (prefetch) lease. Freeing the running job's lease promotes the prefetched
# job's lease in the same step, so a prefetched job is always the next to run and never a third one is queued.
# Free a job's lease (running, or prefetched on `nxt`); a prefetched job moves up. A Lua function, so the
# dispatcher's end-of-job script (dispatch/engine.py) releases in the same step as its other bookkeeping.
RELEASE_LUA = """
local function release(lease, nxt, job)
  if redis.call('get', lease) == job then
    redis.call('del', lease)
    if redis.call('exists', nxt) == 1 then redis.call('rename', nxt, lease) end
    return 1
  end
  if redis.call('get', nxt) == job then return redis.call('del', nxt) end
  return 0
end
"""
_RELEASE = RELEASE_LUA + "return release(KEYS[1], KEYS[2], ARGV[1])\n"
_RENEW = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) "
    "else return 0 end"
)
# Renew many leases in one round trip: KEYS are (lease, next lease) pairs, ARGV[1] the TTL in ms, ARGV[2..] the
# holders. Returns, per pair, 1 if the job holds (and renewed) either lease and 0 if it holds neither.
_RENEW_MANY = """
local out = {}
for i = 1, #KEYS / 2 do
  local job = ARGV[i + 1]
  out[i] = 0
  for _, key in ipairs({KEYS[2 * i - 1], KEYS[2 * i]}) do
    if redis.call('get', key) == job then out[i] = redis.call('pexpire', key, ARGV[1]) end
  end
end
return out
"""


class Endpoint(BaseModel):
    """One ComfyUI server (a pod, or a local process) as registered for dispatch."""

    id: str
    url: str
    pool: str = "default"
    source: str = "static"
    healthy: bool = False
    consecutive_failures: int = 0
    checkpoints: list[str] = Field(default_factory=list)
    loras: list[str] = Field(default_factory=list)
    last_checkpoint: str | None = None
    last_assigned_at: float = 0.0
    last_seen_at: float | None = None
    queue_remaining: int = 0
    last_error: str | None = None
    info: dict[str, Any] = Field(default_factory=dict)
    # Prompts committed to the pod ahead of the running one (the pool's `prefetch`, 0 or 1).
    prefetch: int = 0


_JSON_FIELDS = {"checkpoints", "loras", "info"}


def _encode(fields: dict[str, Any]) -> dict[Any, str]:
    out: dict[Any, str] = {}
    for k, v in fields.items():
        if k in _JSON_FIELDS:
            out[k] = json.dumps(v)
        elif isinstance(v, bool):
            out[k] = "1" if v else "0"
        else:
            out[k] = "" if v is None else str(v)
    return out


def _decode(raw: Mapping[Any, Any]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for k, v in raw.items():
        key, text = as_text(k), as_text(v)
        if key in _JSON_FIELDS:
            data[key] = json.loads(text) if text else ([] if key != "info" else {})
        elif key == "healthy":
            data[key] = text == "1"
        elif text == "" and key in {"last_checkpoint", "last_seen_at", "last_error"}:
            data[key] = None
        else:
            data[key] = text
    return data


def endpoint_id_for_url(url: str) -> str:
    return "url:" + url.rstrip("/")


class Registry:
    """Endpoints are one Redis hash each (fields written independently, so probes and dispatch don't race)."""

    def __init__(self, conn: redis.Redis, keys: Keys):
        self.conn = conn
        self.keys = keys
        self._renew_many = conn.register_script(_RENEW_MANY)
        self._release = conn.register_script(_RELEASE)

    # --- membership -------------------------------------------------------------------------------
    def upsert(self, endpoint_id: str, url: str, pool: str = "default", source: str = "static",
               prefetch: int = 0) -> None:
        """Add an endpoint (unhealthy until probed) or update its address, pool and prefetch depth."""
        key = self.keys.pod(endpoint_id)
        fields = {"id": endpoint_id, "url": url.rstrip("/"), "pool": pool, "source": source, "prefetch": prefetch}
        with self.conn.pipeline() as pipe:
            pipe.sadd(self.keys.pods, endpoint_id)
            pipe.hset(key, mapping=_encode(fields))
            pipe.hsetnx(key, "healthy", "0")
            pipe.execute()

    def remove(self, endpoint_id: str) -> None:
        with self.conn.pipeline() as pipe:
            pipe.srem(self.keys.pods, endpoint_id)
            pipe.delete(self.keys.pod(endpoint_id), self.keys.catalog(endpoint_id))
            pipe.execute()

    def ids(self) -> list[str]:
        return sorted(as_text(i) for i in self.conn.smembers(self.keys.pods))

    def get(self, endpoint_id: str) -> Endpoint | None:
        raw = self.conn.hgetall(self.keys.pod(endpoint_id))
        return Endpoint.model_validate(_decode(raw)) if raw else None

    def endpoints(self) -> list[Endpoint]:
        ids = self.ids()
        with self.conn.pipeline() as pipe:
            for i in ids:
                pipe.hgetall(self.keys.pod(i))
            raws = pipe.execute()
        return [Endpoint.model_validate(_decode(r)) for r in raws if r and b"url" in r]

    # --- health -----------------------------------------------------------------------------------
    def record_probe_ok(self, endpoint_id: str, *, checkpoints: list[str] | None, loras: list[str] | None,
                        queue_remaining: int, info: dict[str, Any]) -> None:
        fields: dict[str, Any] = {"healthy": True, "consecutive_failures": 0, "last_seen_at": time.time(),
                                  "queue_remaining": queue_remaining, "last_error": None, "info": info}
        if checkpoints is not None:
            fields["checkpoints"] = checkpoints
        if loras is not None:
            fields["loras"] = loras
        if self.conn.sismember(self.keys.pods, endpoint_id):
            self.conn.hset(self.keys.pod(endpoint_id), mapping=_encode(fields))

    def record_probe_failed(self, endpoint_id: str, error: str, unhealthy_after: int) -> int:
        """Count a failed probe; the endpoint turns unhealthy after unhealthy_after in a row."""
        key = self.keys.pod(endpoint_id)
        if not self.conn.sismember(self.keys.pods, endpoint_id):
            return 0
        failures = int(self.conn.hincrby(key, "consecutive_failures", 1))
        fields: dict[str, Any] = {"last_error": error}
        if failures >= unhealthy_after:
            fields["healthy"] = False
        self.conn.hset(key, mapping=_encode(fields))
        return failures

    def mark_unhealthy(self, endpoint_id: str, error: str) -> None:
        """Dispatch saw the pod fail (connection refused, crash): skip it until a probe succeeds again."""
        if self.conn.sismember(self.keys.pods, endpoint_id):
            self.conn.hset(self.keys.pod(endpoint_id), mapping=_encode({"healthy": False, "last_error": error}))

    def note_assignment(self, endpoint_id: str, checkpoint: str | None) -> None:
        fields: dict[str, Any] = {"last_assigned_at": time.time()}
        if checkpoint:
            fields["last_checkpoint"] = checkpoint
        self.conn.hset(self.keys.pod(endpoint_id), mapping=_encode(fields))

    def store_catalog(self, endpoint_id: str, object_info: dict[str, Any]) -> None:
        self.conn.set(self.keys.catalog(endpoint_id), json.dumps(object_info))

    def catalog(self, endpoint_id: str) -> dict[str, Any] | None:
        raw = self.conn.get(self.keys.catalog(endpoint_id))
        return json.loads(raw) if raw else None

    # --- leases -----------------------------------------------------------------------------------
    def try_lease(self, endpoint_id: str, job_id: str, ttl_seconds: float) -> bool:
        return bool(self.conn.set(self.keys.lease(endpoint_id), job_id, nx=True, px=int(ttl_seconds * 1000)))

    def renew_lease(self, endpoint_id: str, job_id: str, ttl_seconds: float) -> bool:
        return bool(self.conn.eval(_RENEW, 1, self.keys.lease(endpoint_id), job_id, int(ttl_seconds * 1000)))

    def renew_leases(self, held: list[tuple[str, str]], ttl_seconds: float) -> list[bool]:
        """Renew (endpoint_id, job_id) leases in one round trip; False where the job no longer holds it."""
        if not held:
            return []
        keys = [k for e, _ in held for k in (self.keys.lease(e), self.keys.lease_next(e))]
        result = self._renew_many(keys=keys, args=[int(ttl_seconds * 1000), *(j for _, j in held)])
        return [bool(r) for r in result]

    def release_lease(self, endpoint_id: str, job_id: str) -> bool:
        """Free job_id's lease on the endpoint (running or prefetched); a prefetched job moves up."""
        return bool(self._release(keys=[self.keys.lease(endpoint_id), self.keys.lease_next(endpoint_id)],
                                  args=[job_id]))

    def next_leases(self, endpoint_ids: list[str]) -> dict[str, str]:
        """Jobs committed ahead on endpoints with prefetch (endpoint id -> job id)."""
        if not endpoint_ids:
            return {}
        values = self.conn.mget([self.keys.lease_next(i) for i in endpoint_ids])
        return {i: as_text(v) for i, v in zip(endpoint_ids, values, strict=True) if v}

    def leases(self, endpoint_ids: list[str] | None = None) -> dict[str, str]:
        ids = endpoint_ids if endpoint_ids is not None else self.ids()
        if not ids:
            return {}
        values = self.conn.mget([self.keys.lease(i) for i in ids])
        return {i: as_text(v) for i, v in zip(ids, values, strict=True) if v}

    def candidates(self) -> list[Candidate]:
        """A snapshot for the selection policy: every endpoint with its lease state."""
        endpoints = self.endpoints()
        leased = self.leases([e.id for e in endpoints])
        return [to_candidate(e, e.id in leased) for e in endpoints]


def to_candidate(e: Endpoint, busy: bool) -> Candidate:
    return Candidate(
        id=e.id, pool=e.pool, healthy=e.healthy, busy=busy, checkpoints=frozenset(e.checkpoints),
        loras=frozenset(e.loras), last_checkpoint=e.last_checkpoint, last_assigned_at=float(e.last_assigned_at),
        queue_remaining=int(e.queue_remaining), prefetch=int(e.prefetch),
    )
