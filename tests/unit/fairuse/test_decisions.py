"""Pure fair-use decisions: rate-limit waits, what still counts, queue deadlines, what clean may forget."""

from datetime import UTC, datetime, timedelta

import pytest

from comfyfleet.dispatch.submission import earliest_queue_deadline
from comfyfleet.fairuse.limits import rate_retry_after, still_counts
from comfyfleet.fairuse.queue_timeout import (
    SWEEP_FIELDS,
    expired,
    expired_fields,
    queue_deadline,
    queue_timeout_error,
    waiting_deadline,
)
from comfyfleet.fairuse.retention import forgettable
from comfyfleet.jobs.model import ErrorCode, Job, JobState
from comfyfleet.settings import QUEUE_TIMEOUT_MIN_SECONDS
from comfyfleet.store.jobrepo import encode_fields

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def job(state: JobState = JobState.QUEUED, **kw) -> Job:
    return Job(owner="alice", workflow={}, state=state, created_at=T0, **kw)


@pytest.mark.parametrize(("oldest", "now", "wait"), [(100.0, 100.0, 60), (100.0, 159.2, 1), (100.0, 130.5, 30),
                                                     (100.0, 170.0, 1)])
def test_rate_retry_after_is_when_the_oldest_leaves_the_window(oldest, now, wait):
    assert rate_retry_after(oldest, now) == wait


@pytest.mark.parametrize(("state", "queued_only", "counts"), [
    (JobState.QUEUED, False, True), (JobState.RUNNING, False, True), (JobState.DISPATCHED, True, False),
    (JobState.QUEUED, True, True), (JobState.SUCCEEDED, False, False), (JobState.FAILED, True, False),
])
def test_what_still_counts(state, queued_only, counts):
    assert still_counts(job(state), queued_only) is counts
    assert still_counts(None, queued_only) is False


QUEUE_DEADLINES = [
    (job(), 3599, False),
    (job(), 3600, True),
    (job(queue_timeout_seconds=10), 10, True),
    (job(queue_timeout_seconds=10), 9, False),
    (job(JobState.RUNNING), 99999, False),
    (job(attempts=1), 99999, False),  # a retry waiting for a pod is not a job that never started
    (job(JobState.CANCELLED), 99999, False),
]


@pytest.mark.parametrize(("j", "after", "result"), QUEUE_DEADLINES)
def test_queue_deadline(j, after, result):
    assert expired(j, T0 + timedelta(seconds=after), 3600) is result


@pytest.mark.parametrize(("j", "after", "result"), QUEUE_DEADLINES)
def test_the_sweep_decides_from_a_few_fields_as_from_the_record(j, after, result):
    row = [encode_fields(j)[name].encode() for name in SWEEP_FIELDS]
    assert expired_fields(row, T0 + timedelta(seconds=after), 3600) is result is expired(j, T0 + timedelta(
        seconds=after), 3600)


@pytest.mark.parametrize(("j", "waits"), [(job(), True), (job(queue_timeout_seconds=10), True),
                                          (job(JobState.RUNNING, queue_timeout_seconds=30), False),
                                          (job(attempts=1), False)])
def test_a_waiting_job_has_the_deadline_of_its_record_and_the_index_never_holds_a_later_one(j, waits):
    """The sweep moves a due index entry to waiting_deadline (read from Redis) while the job can still time out;
    the submit's score (earliest_queue_deadline) is never later than that deadline, whatever the default."""
    row = [encode_fields(j)[name].encode() if name in ("state", "created_at") or name in j.model_fields_set
           else None for name in SWEEP_FIELDS]  # the record leaves out the fields at their default
    for default in (QUEUE_TIMEOUT_MIN_SECONDS, 3600):
        assert waiting_deadline(row, default) == (queue_deadline(j, default) if waits else None)
        assert earliest_queue_deadline(j) <= queue_deadline(j, default).timestamp()
    if j.queue_timeout_seconds:
        assert earliest_queue_deadline(j) == queue_deadline(j, 3600).timestamp()
    assert waiting_deadline([None, None, None, None], 3600) is None
    assert waiting_deadline([b'"queued"', b"0", b'"not a date"', b"null"], 3600) is None


@pytest.mark.parametrize(("row", "result"), [
    ([None, None, None, None], False),  # no record
    ([b'"queued"', b"0", b"not json", b"null"], None),  # unreadable: the whole record decides
    ([b'"no such state"', b"0", b'"2026-12-01T12:00:00Z"', b"null"], None),
    ([b'"queued"', b"0", b'"not a date"', b"null"], None),
])
def test_an_unreadable_row_is_left_to_the_whole_record(row, result):
    assert expired_fields(row, T0, 3600) is result


def test_queue_timeout_error_is_clear():
    error = queue_timeout_error(job(pool="gpu", queue_timeout_seconds=30), 3600)
    assert error.code is ErrorCode.QUEUE_TIMEOUT and "30 s" in error.message and "pool gpu" in error.message


@pytest.mark.parametrize(("j", "older_than", "result"), [
    (job(JobState.FAILED, finished_at=T0), T0 + timedelta(seconds=1), True),
    (job(JobState.FAILED, finished_at=T0), T0 - timedelta(seconds=1), False),  # failed recently: kept
    (job(JobState.SUCCEEDED, finished_at=T0), None, True),
    (job(JobState.RUNNING), None, False),
    (None, None, False),
])
def test_forgettable_by_finish_time(j, older_than, result):
    assert forgettable(j, older_than) is result
