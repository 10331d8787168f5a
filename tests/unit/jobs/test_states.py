import pytest

from comfyfleet.jobs.model import ErrorCode, Job, JobError, JobState
from comfyfleet.jobs.states import TRANSITIONS, InvalidTransition, can_transition, transition

S = JobState


def make_job(**kw) -> Job:
    return Job(owner="alice", workflow={"1": {"class_type": "SaveImage", "inputs": {}}}, **kw)


def test_happy_path_sets_timestamps_attempts_and_worker():
    job = make_job()
    job = transition(job, S.DISPATCHED, endpoint="pod-a")
    assert job.attempts == 1 and job.endpoint == "pod-a" and job.dispatched_at is not None
    job = transition(job, S.RUNNING)
    assert job.started_at is not None
    job = transition(job, S.SUCCEEDED)
    assert job.finished_at is not None and job.progress.fraction == 1.0


def test_retry_returns_to_queue_keeps_error_and_counts_the_next_attempt():
    job = transition(transition(make_job(), S.DISPATCHED, endpoint="a"), S.RUNNING)
    err = JobError(code=ErrorCode.WORKER_LOST, message="pod died")
    job = transition(job, S.QUEUED, error=err)
    assert job.state is S.QUEUED and job.endpoint is None and job.error == err
    job = transition(job, S.DISPATCHED, endpoint="b")
    assert job.attempts == 2 and job.error is None


@pytest.mark.parametrize("final", [S.SUCCEEDED, S.FAILED, S.CANCELLED])
def test_final_states_are_final(final):
    job = transition(make_job(), final if final is not S.SUCCEEDED else S.DISPATCHED)
    if final is S.SUCCEEDED:
        job = transition(job, S.SUCCEEDED)
    for target in S:
        assert not can_transition(job.state, target)
        with pytest.raises(InvalidTransition):
            transition(job, target)


def test_queued_cannot_jump_to_running_or_succeeded():
    with pytest.raises(InvalidTransition, match="queued to running"):
        transition(make_job(), S.RUNNING)
    assert not can_transition(S.QUEUED, S.SUCCEEDED)


def test_every_state_has_a_row():
    assert set(TRANSITIONS) == set(S)


def test_failed_records_error():
    err = JobError(code=ErrorCode.VALIDATION, message="bad")
    job = transition(make_job(), S.FAILED, error=err)
    assert job.error == err and job.finished_at is not None


def test_error_codes_retryable_only_for_pod_failures():
    assert ErrorCode.WORKER_LOST.retryable and ErrorCode.OUT_OF_MEMORY.retryable
    assert not ErrorCode.VALIDATION.retryable and not ErrorCode.EXECUTION.retryable
    assert not ErrorCode.TIMEOUT.retryable
