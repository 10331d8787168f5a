"""Job records in Redis: the live source of truth for every job's state, progress and outputs.

A record is one hash, one field per top-level field of `Job` (JSON values), so a state change or a progress
tick writes only what changed — never the workflow again — and a field that cannot be parsed (a poisoned or
truncated value) spoils only itself: readers still get the job, marked failed, and never crash on it.
A new record leaves out the fields that hold their default (jobs/model.py `without_defaults`; at creation most
do): every reader takes a missing field as its default, and a write stores a field once it changes.
Besides the Job fields the hash holds `needs` (the pool, checkpoints and LoRAs the scheduler matches on),
written once at creation so a claim pass never parses workflows.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import redis
from pydantic import ValidationError

from comfyfleet.jobs.model import FIELD_DEFAULTS, ErrorCode, Job, JobError, JobState, without_defaults
from comfyfleet.jobs.workflow import model_needs
from comfyfleet.jsontext import dumps, json_text
from comfyfleet.keys import Keys, as_text
from comfyfleet.luascript import Arg, LuaScript
from comfyfleet.store import jobevents
from comfyfleet.webhooks.outbox import queue_webhooks  # HOOK(integrations)

log = logging.getLogger(__name__)

JOB_FIELDS: tuple[str, ...] = tuple(Job.model_fields)
NEEDS_FIELD = "needs"
# Fields that more than one writer changes and that only ever hold encode_fields() output, so a write checks
# them against what its writer read: the runner (new deliveries queued with a state change) and the webhook
# deliverer (delivery results) both rewrite the whole delivery list.
GUARDED_FIELDS = frozenset({"webhook_deliveries"})
# The fields a claim pass reads for each queued job (never the workflow).
COMPACT_FIELDS = ("state", "pool", "owner", "priority", NEEDS_FIELD, "endpoint", "timeout_seconds")


# Lua functions for scripts that create a record (JobRepo.create, and the dispatcher's one-call submit).
# create_record(keys, args) creates it unless the (owner, idempotency key) slot already names a live job: atomic,
# so two concurrent requests with one key create one job; the new record's `state` event is recorded in the
# same call. keys = {job, idem (or ""), owner index, all-jobs index, stats, dirty (or ""),
# event stream}; args = {job id, score, idem ttl, track dirty (0/1), job key prefix, the fields as one JSON
# object of JSON values, then the 6 event_args of store/jobevents.py} (JobRepo.create_call). Returns nil once
# created, else the id of the live job the key names.
CREATE_LUA = jobevents.EMIT_LUA + """
local function flat_pairs(json_object)
  local flat = {}
  for name, value in pairs(cjson.decode(json_object)) do
    flat[#flat + 1] = name
    flat[#flat + 1] = value
  end
  return flat
end
local function create_record(keys, args)
  local id = args[1]
  if keys[2] ~= '' then
    local existing = redis.call('GET', keys[2])
    if existing and existing ~= id and redis.call('EXISTS', args[5] .. existing) == 1 then
      return existing
    end
    redis.call('SET', keys[2], id, 'EX', args[3])
  end
  redis.call('HSET', keys[1], unpack(flat_pairs(args[6])))
  redis.call('ZADD', keys[3], args[2], id)
  redis.call('ZADD', keys[4], args[2], id)
  redis.call('HINCRBY', keys[5], 'created', 1)
  if args[4] == '1' then redis.call('SADD', keys[6], id) end
  -- recorded, not published: nobody can follow a job before its id is made, so its channel has no subscriber
  record(keys[7], args[7], args[8], args[9], args[10])
  return nil
end
"""
_CREATE = LuaScript(CREATE_LUA + """
return create_record(KEYS, ARGV) or ARGV[1]
""")

# Write changed fields only if the state is still the one the writer saw (compare-and-set on `state`), and
# every guarded field the writer changes still holds what the writer read (no lost update of a field two
# writers change, e.g. webhook deliveries); then emit the job event, in the same step. KEYS: job, stats, dirty,
# event stream. ARGV: expected state JSON ('' = any), ttl (0 = none), count terminal (0/1), mark dirty (0/1),
# new state value (for the stats counter), job id, number of guards n, the event's 6 arguments
# (jobevents.event_args), n (field, expected value, 1 if the expected value is the field's default so a record
# without the field holds it, else 0) triples, then field/value pairs.
# Returns 1 written, 0 state or a guarded field moved meanwhile, -1 no such job.
_CAS = jobevents.EMIT_LUA + """
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return -1 end
if ARGV[1] ~= '' and cur ~= ARGV[1] then return 0 end
local n = tonumber(ARGV[7])
for i = 0, n - 1 do
  local now = redis.call('HGET', KEYS[1], ARGV[14 + 3 * i])
  if now then
    if now ~= ARGV[15 + 3 * i] then return 0 end
  elseif ARGV[16 + 3 * i] ~= '1' then return 0 end
end
local first = 14 + 3 * n
if #ARGV >= first then redis.call('HSET', KEYS[1], unpack(ARGV, first)) end
if tonumber(ARGV[2]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
if ARGV[3] == '1' then redis.call('HINCRBY', KEYS[2], ARGV[5], 1) end
if ARGV[4] == '1' then redis.call('SADD', KEYS[3], ARGV[6]) end
emit(KEYS[4], ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12], ARGV[13])
return 1
"""

# A progress tick: the progress field and its event. KEYS: job, event stream. ARGV: the event's 6 arguments,
# then the progress JSON.
_PROGRESS = jobevents.EMIT_LUA + """
redis.call('HSET', KEYS[1], 'progress', ARGV[7])
emit(KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
return 1
"""


class JobNotFound(LookupError):
    def __init__(self, job_id: str):
        super().__init__(f"no job {job_id!r}")
        self.job_id = job_id


class StateChanged(Exception):
    """A compare-and-set write found the job in another state than the writer expected."""


_ENCODE_TEXT: Callable[[str], str] = json.encoder.encode_basestring_ascii


def _json(value: Any) -> str:
    """json.dumps(value, separators=(",", ":")), character for character, at a fraction of its cost for the
    None / bool / int / text / empty values most fields hold (json.dumps builds an encoder per call). Writers
    compare some fields' stored text with this (the state, guarded fields), so every version writes the same."""
    kind = type(value)
    if value is None:
        return "null"
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return int.__repr__(value)
    if kind is str:
        return _ENCODE_TEXT(value)
    if (kind is list or kind is dict) and not value:
        return "[]" if kind is list else "{}"
    return json_text(value)


# FIELD_DEFAULTS as the record stores them (a guard compares stored text).
FIELD_DEFAULT_TEXT: dict[str, str] = {k: _json(v) for k, v in FIELD_DEFAULTS.items()}


def encode_fields(job: Job, names: Iterable[str] | None = None) -> dict[str, str]:
    """JSON value per Job field (all, or the named ones)."""
    data = job.model_dump(mode="json", include=set(names) if names is not None else None)
    return {k: _json(v) for k, v in data.items()}


def changed_fields(before: Job, after: Job) -> list[str]:
    def same(name: str) -> bool:
        a, b = getattr(before, name), getattr(after, name)
        return a is b or bool(a == b)

    return [f for f in JOB_FIELDS if not same(f)]


def needs_of(job: Job) -> dict[str, Any]:
    needs = model_needs(job.workflow)
    return {"checkpoints": sorted(needs.checkpoints), "loras": sorted(needs.loras)}


def decode_job(job_id: str, raw: Mapping[Any, Any]) -> Job:
    """Build a Job from its hash. A field that does not parse is dropped to its default and the job comes back
    failed with an `internal_error` naming the field (the caller quarantines it): one bad record never takes a
    reader down."""
    data: dict[str, Any] = {}
    broken: list[str] = []
    for k, v in raw.items():
        name = as_text(k)
        if name not in Job.model_fields:
            continue
        try:
            data[name] = json.loads(v)
        except (ValueError, RecursionError):
            broken.append(name)
    data.setdefault("id", job_id)
    try:
        return Job.model_validate(data)
    except (ValidationError, RecursionError) as exc:
        if isinstance(exc, ValidationError):
            broken += sorted({str(e["loc"][0]) for e in exc.errors() if e["loc"]})
    return _quarantined(job_id, data, broken)


def _quarantined(job_id: str, data: dict[str, Any], broken: list[str]) -> Job:
    safe: dict[str, Any] = {"id": job_id, "owner": "unknown", "workflow": {}}
    for name in ("owner", "priority", "pool", "created_at", "attempts", "max_attempts", "source", "template"):
        if name in data and name not in broken:
            safe[name] = data[name]
    try:
        base = Job.model_validate(safe)
    except ValidationError:
        base = Job(id=job_id, owner="unknown", workflow={})
    error = JobError(code=ErrorCode.INTERNAL, message=f"the stored job record cannot be read (fields: "
                     f"{', '.join(sorted(set(broken))) or 'record'}); the job was taken out of dispatch",
                     details={"corrupt_fields": sorted(set(broken))})
    return base.model_copy(update={"state": JobState.FAILED, "error": error})


def is_quarantined(job: Job) -> bool:
    return bool(job.error and job.error.details and "corrupt_fields" in job.error.details)


class JobRepo:
    """Reads and writes Job records; every change is published as a job event (store/jobevents.py)."""

    def __init__(self, conn: redis.Redis, keys: Keys, finished_ttl_seconds: int = 7 * 24 * 3600,
                 track_dirty: bool = False):
        self.conn = conn
        self.keys = keys
        self.finished_ttl = finished_ttl_seconds
        # With a durable mirror (Firestore) on, every write also marks the job dirty for the write-behind.
        self.track_dirty = track_dirty
        self._cas = conn.register_script(_CAS)
        self._progress = conn.register_script(_PROGRESS)
        self._event = conn.register_script(jobevents.ADD_EVENT)

    # --- create -----------------------------------------------------------------------------------
    def create(self, job: Job) -> tuple[Job, bool]:
        """Store a new job and publish its `state` event; with an idempotency key, return the existing job instead
        (created=False). The dispatcher's submit creates records with the same Lua in its own script."""
        keys, args = self.create_call(job)
        winner = as_text(_CREATE(self.conn, keys, args))
        if winner != job.id:
            existing = self.get(winner)
            if existing is not None:
                return existing, False
        return job, True

    def create_call(self, job: Job) -> tuple[list[str], list[Arg]]:
        """CREATE_LUA's create_record(keys, args) for this job."""
        # Once, for the record's fields and the event's payload. The workflow, the largest field, is JSON data
        # already (a request's body or a template with params written in) that pydantic would walk value by
        # value: orjson writes it as it is, once, and it is never compared as text (jsontext.py).
        # The record and its first event leave out the fields at their default.
        dump = without_defaults(job.model_dump(mode="json", exclude={"workflow"}))
        fields = {k: _json(v) for k, v in dump.items()}
        fields["workflow"] = dumps(job.workflow)
        fields[NEEDS_FIELD] = dumps(needs_of(job))
        idem = self.keys.idempotency(job.owner, job.idempotency_key) if job.idempotency_key else ""
        args: list[Arg] = [job.id, job.created_at.timestamp(), self.finished_ttl, int(self.track_dirty),
                           self.keys.job(""), dumps(fields),
                           *jobevents.event_args(self.keys, job, "state", jobevents.payload_of(dump))]
        keys = [self.keys.job(job.id), idem, self.keys.owner_jobs(job.owner), self.keys.all_jobs, self.keys.stats,
                self.keys.dirty if self.track_dirty else "", jobevents.stream_key(self.keys, job.id)]
        return keys, args

    # --- read -------------------------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        raw = self.conn.hgetall(self.keys.job(job_id))
        return self._decode(job_id, raw) if raw else None

    def require(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    def get_many(self, job_ids: list[str]) -> list[Job | None]:
        if not job_ids:
            return []
        with self.conn.pipeline(transaction=False) as pipe:
            for j in job_ids:
                pipe.hgetall(self.keys.job(j))
            raws = pipe.execute()
        return [self._decode(j, r) if r else None for j, r in zip(job_ids, raws, strict=True)]

    def compact_many(self, job_ids: list[str]) -> list[dict[str, Any] | None]:
        """The scheduler's view of each job (COMPACT_FIELDS, JSON-decoded; a field the record leaves out is its
        default), None for a missing record; a field that cannot be decoded comes back as the key `corrupt`."""
        if not job_ids:
            return []
        with self.conn.pipeline(transaction=False) as pipe:
            for j in job_ids:
                pipe.hmget(self.keys.job(j), COMPACT_FIELDS)
            rows = pipe.execute()
        out: list[dict[str, Any] | None] = []
        for row in rows:
            if row[0] is None:
                out.append(None)
                continue
            item: dict[str, Any] = {}
            for name, value in zip(COMPACT_FIELDS, row, strict=True):
                try:
                    item[name] = json.loads(value) if value is not None else FIELD_DEFAULTS.get(name)
                except (ValueError, RecursionError):
                    item["corrupt"] = name
            out.append(item)
        return out

    def _decode(self, job_id: str, raw: Mapping[Any, Any]) -> Job:
        job = decode_job(job_id, raw)
        if is_quarantined(job):
            self.quarantine(job)
        return job

    def quarantine(self, job: Job) -> None:
        """Persist a record that cannot be read as failed (only if it was not final), once; log it loudly."""
        fields = {"state": json.dumps(JobState.FAILED.value), "error": json.dumps(job.error.model_dump(mode="json"))
                  if job.error else "null"}
        written = self._write(job, fields, expect=None, terminal=True, new_state=JobState.FAILED,
                              only_if_live=True)  # its event tells followers the job failed
        if written:
            log.error("job %s: stored record is unreadable; marked failed: %s", job.id,
                      job.error.message if job.error else "")

    # --- write ------------------------------------------------------------------------------------
    def update(self, job_id: str, change: Callable[[Job], Job], event: str = "state") -> Job:
        """Apply change to the stored job and write the fields it changed, atomically against concurrent state
        changes (compare-and-set on the state; retried when it moved), then publish the result.

        change may raise (e.g. InvalidTransition); then nothing is written.
        """
        while True:
            before = self.get(job_id)
            if before is None:
                raise JobNotFound(job_id)
            after = change(before)
            try:
                return self.write(before, after, event)
            except StateChanged:
                continue

    def write(self, before: Job, after: Job, event: str = "state", guard: Iterable[str] = ()) -> Job:
        """Write what changed from before to after if the stored state is still before's (and every field named
        in `guard` still holds before's value); raises StateChanged (nothing written) if it moved, JobNotFound
        if the record is gone."""
        after = queue_webhooks(self.conn, self.keys, before, after)  # HOOK(integrations): outbox, before the CAS
        names = changed_fields(before, after)
        if not names:
            return after
        fields = encode_fields(after, names)
        terminal = after.state.is_terminal
        counted = terminal and not before.state.is_terminal
        guards = encode_fields(before, [n for n in names if n in GUARDED_FIELDS] + list(guard))
        result = self._write(after, fields, expect=before.state, terminal=terminal,
                             new_state=after.state if counted else None, dirty=event == "state", guards=guards,
                             event=event)
        if result == 0:
            raise StateChanged(after.id)
        if result < 0:
            raise JobNotFound(after.id)
        return after

    def set_progress(self, job: Job) -> None:
        """Write only the progress of a running job (no state check: a late tick on a finished job is harmless
        to its state) and publish it, in one script call."""
        progress = json_text(job.progress.model_dump(mode="json"))
        self._progress(keys=[self.keys.job(job.id), jobevents.stream_key(self.keys, job.id)],
                       args=[*jobevents.event_args(self.keys, job, "progress"), progress])

    def _write(self, job: Job, fields: dict[str, str], *, expect: JobState | None, terminal: bool,
               new_state: JobState | None, dirty: bool = True, only_if_live: bool = False,
               guards: dict[str, str] | None = None, event: str = "state") -> int:
        job_id = job.id
        if only_if_live:
            # Quarantine: write unless the record is already final.
            current = self.conn.hget(self.keys.job(job_id), "state")
            if current is None:
                return -1
            try:
                if JobState(json.loads(current)).is_terminal:
                    return 0
            except (ValueError, RecursionError):
                pass
            expect_arg = as_text(current)
        else:
            expect_arg = json.dumps(expect.value) if expect is not None else ""
        args: list[Any] = [expect_arg, self.finished_ttl if terminal else 0, 1 if new_state else 0,
                           int(dirty and self.track_dirty), new_state.value if new_state else "", job_id,
                           len(guards or {}), *jobevents.event_args(self.keys, job, event)]
        for k, v in (guards or {}).items():
            args += [k, v, 1 if FIELD_DEFAULT_TEXT.get(k) == v else 0]
        for k, v in fields.items():
            args += [k, v]
        return int(self._cas(keys=[self.keys.job(job_id), self.keys.stats, self.keys.dirty,
                                   jobevents.stream_key(self.keys, job_id)], args=args))

    def publish(self, job: Job, event: str) -> None:
        """Publish one job event (store/jobevents.py) without writing the record."""
        self._event(keys=[jobevents.stream_key(self.keys, job.id)], args=jobevents.event_args(self.keys, job, event))

    # --- indexes ----------------------------------------------------------------------------------
    def owner_job_ids(self, owner: str, limit: int, before: float | None = None) -> list[str]:
        """Newest first; `before` is a creation timestamp cursor. Ids whose record expired (finished jobs live
        `finished_ttl`) are dropped from the owner's index as they are met, so it never grows without bound."""
        high = f"({before}" if before is not None else "+inf"
        index = self.keys.owner_jobs(owner)
        while True:
            ids = [as_text(i) for i in self.conn.zrevrangebyscore(index, high, "-inf", start=0, num=limit)]
            if not ids:
                return []
            with self.conn.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.exists(self.keys.job(job_id))
                alive = pipe.execute()
            gone = [j for j, ok in zip(ids, alive, strict=True) if not ok]
            if not gone:
                return ids
            with self.conn.pipeline(transaction=False) as pipe:
                pipe.zrem(index, *gone)
                pipe.zrem(self.keys.all_jobs, *gone)
                pipe.execute()

    def counters(self) -> dict[str, int]:
        raw = self.conn.hgetall(self.keys.stats)
        return {as_text(k): int(v) for k, v in raw.items()}

    def delete(self, job: Job) -> None:
        with self.conn.pipeline() as pipe:
            pipe.delete(self.keys.job(job.id))
            pipe.zrem(self.keys.owner_jobs(job.owner), job.id)
            pipe.zrem(self.keys.all_jobs, job.id)
            pipe.execute()

    def all_job_ids(self, older_than: float | None = None) -> list[str]:
        high = older_than if older_than is not None else "+inf"
        return [as_text(i) for i in self.conn.zrangebyscore(self.keys.all_jobs, "-inf", high)]
