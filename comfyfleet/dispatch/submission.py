"""The submit as ONE atomic Redis call: fair-use admit (optional), the job record and its `state` event, the RQ
job and its queue entry, its queue-timeout index entry, the scheduler's wake-up.

The parts are the Lua of their own modules (fairuse/limits.py ADMIT_LUA, store/jobrepo.py CREATE_LUA) plus the
writes of RQ 3.0's `Queue.enqueue_job` for a job without dependencies, TTL or rate limit
(`_enqueue_async_job`: SADD rq:queues, HSET of `Job.to_dict()` with status queued and enqueued_at, RPUSH).
tests/integration/test_submit_path.py checks the RQ side against RQ's own enqueue and RQ's reads.

Building and compressing an RQ job per submit costs more than the rest of it, so `RQJobShapes` asks RQ for
`to_dict()` once per shape (priority, timeout, attempts) with stand-ins for the id and owner, and per job only
fills in the id, owner and clock.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from rq import Queue
from rq.job import Job as RQJob
from rq.job import JobStatus, validate_job_id
from rq.utils import now as rq_now

from comfyfleet.fairuse.limits import ADMIT_LUA, FairUse
from comfyfleet.jobs.model import Job
from comfyfleet.jsontext import dumps
from comfyfleet.keys import Keys, as_text
from comfyfleet.luascript import Arg, LuaScript
from comfyfleet.settings import QUEUE_TIMEOUT_MIN_SECONDS
from comfyfleet.store.jobrepo import CREATE_LUA, JobRepo

# ARGV: a JSON header {record_keys (create_record's keys), rq_job (the RQ job's key), rq_queues (rq:queues), queue
# (the RQ queue's key), deadlines (the queue-timeout index) and deadline (the job's score there), wake (the
# channel), and with fair use admit_keys, admit_args (admit's)}, the RQ job's
# fields but `data` (a JSON object), its `data`, then create_record's args as they are (ARGV[4] on).
# Every key travels in the header, not in KEYS: redis-py packs each argument in Python, and 50 of them cost
# the API more than the rest of the call. Fine on a single Redis (RQ needs one); a cluster would need KEYS.
# The record's args (its fields' JSON and its event, the large values) are plain arguments, not header
# values: inside the header they were escaped a second time by json.dumps and decoded again by cjson.
# Returns {'created', id}, {'existing', id of the job the idempotency key names}, or admit's refusal.
SUBMIT = LuaScript(ADMIT_LUA + CREATE_LUA + """
local h = cjson.decode(ARGV[1])
local record_args = {unpack(ARGV, 4)}
local id = record_args[1]
if h.admit_keys then
  local refused = admit(h.admit_keys, h.admit_args)
  if refused then return refused end
end
local existing = create_record(h.record_keys, record_args)
if existing then
  if h.admit_keys then release(h.admit_keys, id) end
  return {'existing', existing}
end
redis.call('HSET', h.rq_job, 'data', ARGV[3], unpack(flat_pairs(ARGV[2])))
redis.call('SADD', h.rq_queues, h.queue)
redis.call('RPUSH', h.queue, id)
redis.call('ZADD', h.deadlines, h.deadline, id)
redis.call('PUBLISH', h.wake, '1')
return {'created', id}
""")

# Stand-ins in the RQ job of a shape, replaced per job: job ids are UUIDs (no underscore; RQ allows letters,
# digits, _ and -), owners never hold a NUL.
_STAND_IN_ID = "comfyfleet_stand_in_job_id"
_STAND_IN_OWNER = "\x00owner\x00"
_ENCODE_TEXT: Callable[[str], str] = json.encoder.encode_basestring_ascii  # json.dumps of a str, quotes and all
# Timeouts come from requests: keep the cache bounded.
_MAX_SHAPES = 256


@dataclass(frozen=True)
class _Shape:
    fields_json: str  # json.dumps of the hash's fields but `data`, with _STAMP and _DESCRIPTION in their place
    description: str
    data: bytes  # the serialized call, uncompressed
    queue_key: str


# Where the clock's stamp and the job's description go in a shape's fields_json (NUL-delimited names: no other
# field holds a NUL).
_STAMP = "\x00stamp\x00"
_DESCRIPTION = "\x00description\x00"
_STAMP_JSON = json.dumps(_STAMP)
_DESCRIPTION_JSON = json.dumps(_DESCRIPTION)


def compress(data: bytes) -> bytes:
    """A zlib stream RQ reads with zlib.decompress, as it stores a job's call: one stored (not deflated) block.
    For a ~100-byte call deflating saves a few bytes and sets up zlib state per job (~5 us; ~100 us with
    zlib.compress's defaults)."""
    size = len(data)
    if size > 0xFFFF:  # one stored block holds at most 64 KiB
        packer = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, 9, 1)
        return packer.compress(data) + packer.flush()
    return (b"\x78\x01\x01" + size.to_bytes(2, "little") + (size ^ 0xFFFF).to_bytes(2, "little") + data
            + zlib.adler32(data).to_bytes(4, "big"))


def _redis_text(value: object) -> str:
    """A value as redis-py sends it (str as is, numbers by repr)."""
    if isinstance(value, JobStatus):
        return value.value
    return value if isinstance(value, str) else repr(value)


_second_text: tuple[int, str] = (-1, "")  # the last whole second formatted, and its text


def rq_stamp(now_ns: int | None = None) -> str:
    """utcformat(rq_now()): RQ's '%Y-%m-%dT%H:%M:%S.%fZ' of the UTC clock (time.time_ns() when not given);
    the date and time of day formatted once per second."""
    global _second_text
    second, nanos = divmod(time.time_ns() if now_ns is None else now_ns, 1_000_000_000)
    if second != _second_text[0]:
        _second_text = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{_second_text[1]}.{nanos // 1000:06d}Z"


class RQJobShapes:
    """The RQ job hash of a job, from RQ's own to_dict() of a stand-in of the same shape."""

    def __init__(self, rq_job: Callable[[Job], RQJob], queue: Callable[[int], Queue]):
        self.rq_job = rq_job
        self.queue = queue
        self._shapes: dict[tuple[int, int, int], _Shape] = {}

    def fields(self, job: Job) -> tuple[str, bytes, str]:
        """(JSON of the hash's fields but `data`, `data`, the queue's key) for this job, as enqueue_job writes
        them: created_at and enqueued_at the clock now, the description naming the job and its owner."""
        validate_job_id(job.id)  # what RQ checks of an id it is given (the stand-in went through create_job)
        shape = self._shape(job)
        description = shape.description.replace(_STAND_IN_ID, job.id).replace(_STAND_IN_OWNER, job.owner)
        fields_json = (shape.fields_json.replace(_STAMP_JSON, f'"{rq_stamp()}"')
                       .replace(_DESCRIPTION_JSON, _ENCODE_TEXT(description)))
        return fields_json, compress(shape.data.replace(_STAND_IN_ID.encode(), job.id.encode())), shape.queue_key

    def _shape(self, job: Job) -> _Shape:
        key = (job.priority, job.timeout_seconds, job.max_attempts)
        shape = self._shapes.get(key)
        if shape is None:
            stand_in = self.rq_job(job.model_copy(update={"id": _STAND_IN_ID, "owner": _STAND_IN_OWNER}))
            stand_in.enqueued_at = rq_now()
            raw = stand_in.to_dict()
            description = str(raw.pop("description"))
            for name in ("created_at", "enqueued_at", "data"):
                raw.pop(name)
            raw["status"] = JobStatus.QUEUED  # what enqueue_job sets
            fields = {k: _redis_text(v) for k, v in raw.items()}
            fields["created_at"] = fields["enqueued_at"] = _STAMP  # in the order the per-job dict had them
            fields["description"] = _DESCRIPTION
            shape = _Shape(json.dumps(fields), description, stand_in.data, self.queue(job.priority).key)
            if len(self._shapes) >= _MAX_SHAPES:
                self._shapes.clear()
            self._shapes[key] = shape
        return shape


@dataclass(frozen=True)
class SubmitResult:
    """`created` (job_id is the job's), `existing` (job_id names the first job of its idempotency key), or a
    fair-use refusal: `limit` and `value` as admit returns them."""

    outcome: str
    job_id: str = ""
    limit: str = ""
    value: str = ""


def submit_call(job: Job, repo: JobRepo, keys: Keys, shapes: RQJobShapes, fair: FairUse | None,
                now: float) -> tuple[list[str], list[Arg]]:
    """SUBMIT's keys (none) and args for this job (fair None: no fair-use admit)."""
    record_keys, record_args = repo.create_call(job)
    fields_json, data, queue_key = shapes.fields(job)
    header: dict[str, object] = {
        "record_keys": record_keys,
        "rq_job": RQJob.key_for(job.id), "rq_queues": Queue.redis_queues_keys, "queue": queue_key,
        "deadlines": keys.queue_deadlines, "deadline": repr(earliest_queue_deadline(job)), "wake": keys.wake,
    }
    if fair is not None:
        admit_keys, admit_args = fair.admit_call(job, now)
        header["admit_keys"], header["admit_args"] = admit_keys, [_lua_text(a) for a in admit_args]
    return [], [dumps(header), fields_json, data, *record_args]


def earliest_queue_deadline(job: Job) -> float:
    """The job's score in the queue-timeout index: its queue deadline when the job names its timeout, else the
    earliest any server default can make it (the sweep reads the record then and moves the entry to the
    deadline its own default gives)."""
    return job.created_at.timestamp() + (job.queue_timeout_seconds or QUEUE_TIMEOUT_MIN_SECONDS)


def _lua_text(value: Arg) -> str:
    """An argument as the text redis-py would send (scripts compare some with strings, e.g. '1')."""
    if isinstance(value, bytes):
        return value.decode()
    return value if isinstance(value, str) else repr(value)


def parse_result(reply: list[object]) -> SubmitResult:
    first, second = as_text(reply[0]), as_text(reply[1])
    if first in ("created", "existing"):
        return SubmitResult(first, job_id=second)
    return SubmitResult("refused", limit=first, value=second)

