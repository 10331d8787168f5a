"""Job records in Firestore: the write-behind from Redis, the history served from it, and Firestore outages."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from comfyfleet.jobs.model import Job, JobState
from comfyfleet.jobs.states import transition
from comfyfleet.keys import Keys
from comfyfleet.settings import CommonSettings
from comfyfleet.store.firestore import FirestoreHistory, FirestoreMirror, firestore_client
from comfyfleet.store.jobrepo import JobRepo
from tests.integration.firebase.emulators import PROJECT
from tests.support.stack import ALICE, BOB, auth, wait_until

WORKFLOW = {"3": {"class_type": "KSampler", "inputs": {"seed": 5}}}


@pytest.fixture
def settings(firestore_env, tmp_path) -> CommonSettings:
    # A collection per test: the emulator is shared by the session.
    return CommonSettings(firestore_enabled=True, firebase_project_id=PROJECT, data_dir=tmp_path,
                          firestore_collection=f"jobs_{uuid.uuid4().hex[:8]}", redis_prefix="t" + uuid.uuid4().hex[:8])


@pytest.fixture
def repo(redis_server, settings) -> JobRepo:
    conn = redis.Redis.from_url(redis_server.url)
    return JobRepo(conn, Keys(settings.redis_prefix), track_dirty=True)


@pytest.fixture
def mirror(settings, repo) -> FirestoreMirror:
    return FirestoreMirror.from_settings(settings, repo.conn, repo)


def doc(settings: CommonSettings, job_id: str) -> dict[str, Any] | None:
    snap = firestore_client(settings).collection(settings.firestore_collection).document(job_id).get(timeout=10)
    return snap.to_dict() if snap.exists else None


def make_job(owner: str, minutes_ago: int = 0) -> Job:
    return Job(owner=owner, workflow=WORKFLOW, params={"seed": 5},
               created_at=datetime.now(UTC) - timedelta(minutes=minutes_ago))


def test_created_and_changed_jobs_reach_firestore_after_one_drain(settings, repo, mirror):
    job, _ = repo.create(make_job("uid-a"))
    assert mirror.backlog() == 1
    assert mirror.take_lease() and mirror.drain_once() == 1
    record = doc(settings, job.id)
    assert record["owner"] == "uid-a" and record["state"] == "queued" and record["params"] == {"seed": 5}
    assert mirror.backlog() == 0

    repo.update(job.id, lambda j: transition(j, JobState.CANCELLED))
    assert mirror.backlog() == 1
    mirror.drain_once()
    assert doc(settings, job.id)["state"] == "cancelled"
    assert mirror.backlog() == 0


def test_progress_only_changes_do_not_cost_a_write(settings, repo, mirror):
    job, _ = repo.create(make_job("uid-a"))
    mirror.take_lease()
    mirror.drain_once()
    repo.update(job.id, lambda j: j.model_copy(update={"attempts": 1}), event="progress")
    assert mirror.backlog() == 0


def test_a_job_gone_from_redis_is_dropped_from_the_backlog(settings, repo, mirror):
    job, _ = repo.create(make_job("uid-a"))
    repo.delete(job)
    repo.conn.delete(repo.keys.job(job.id))
    mirror.take_lease()
    assert mirror.drain_once() == 0
    assert mirror.backlog() == 0 and doc(settings, job.id) is None


def test_a_second_mirror_waits_for_the_lease(settings, repo, mirror):
    other = FirestoreMirror.from_settings(settings, repo.conn, repo)
    assert mirror.take_lease() is True
    assert other.take_lease() is False
    mirror.release_lease()
    assert other.take_lease() is True


def test_history_is_newest_first_paged_and_per_owner(settings, repo, mirror):
    mine = [repo.create(make_job("uid-a", minutes_ago=m))[0] for m in (30, 20, 10, 0)]
    repo.create(make_job("uid-b"))
    mirror.take_lease()
    mirror.drain_once()
    history = FirestoreHistory.from_settings(settings, repo)
    first = history.page("uid-a", limit=3)
    assert [j.id for j in first.jobs] == [j.id for j in reversed(mine)][:3]
    assert first.next_before is not None
    second = history.page("uid-a", limit=3, before=first.next_before)
    assert [j.id for j in second.jobs] == [mine[0].id] and second.next_before is None
    assert [j.owner for j in history.page("uid-b", limit=10).jobs] == ["uid-b"]


def test_history_outlives_the_redis_record(settings, repo, mirror):
    job, _ = repo.create(make_job("uid-a"))
    repo.update(job.id, lambda j: transition(j, JobState.CANCELLED))
    mirror.take_lease()
    mirror.drain_once()
    repo.delete(job)
    repo.conn.delete(repo.keys.job(job.id))
    [back] = FirestoreHistory.from_settings(settings, repo).page("uid-a", limit=5).jobs
    assert back.id == job.id and back.state is JobState.CANCELLED and back.created_at == job.created_at


def backlog_metric(stack) -> float:
    text = stack.http.get("/metrics").text
    match = re.search(r"^comfyfleet_firestore_backlog (\S+)$", text, re.M)
    return float(match.group(1)) if match else -1.0


def test_api_mirrors_jobs_and_survives_a_firestore_outage(stack_factory, firestore_emulator, settings):
    """Job creation never waits for Firestore; the backlog is visible and drains once Firestore is back."""
    env = {"FIRESTORE_EMULATOR_HOST": firestore_emulator.host, "COMFYFLEET_FIRESTORE_ENABLED": "true",
           "COMFYFLEET_FIREBASE_PROJECT_ID": PROJECT, "COMFYFLEET_FIRESTORE_COLLECTION": settings.firestore_collection}
    stack = stack_factory([], workers=0, env=env)
    body = {"workflow": WORKFLOW}
    first = stack.generate(body).json()["jobId"]
    wait_until(lambda: doc(settings, first), what="the first job's record in Firestore")

    firestore_emulator.stop()
    try:
        during = []
        for _ in range(3):
            r = stack.generate(body)
            assert r.status_code == 202, r.text
            during.append(r.json()["jobId"])
        assert stack.job(during[-1])["state"] == "queued"
        wait_until(lambda: backlog_metric(stack) >= 3, what="the backlog metric to count the unwritten jobs")
        # History still answers (from Redis) while Firestore is away.
        listed = stack.http.get("/api/comfyui/jobs", headers=auth(ALICE)).json()["jobs"]
        assert {j["jobId"] for j in listed} >= set(during)
    finally:
        firestore_emulator.start()  # an empty in-memory Firestore on the same port

    wait_until(lambda: backlog_metric(stack) == 0, timeout=60, what="the backlog to drain")
    for job_id in during:
        assert doc(settings, job_id)["owner"] == "alice"
    listed = stack.http.get("/api/comfyui/jobs", headers=auth(ALICE)).json()["jobs"]
    assert [j["jobId"] for j in listed] == list(reversed(during)), "served from Firestore: only what it holds"
    assert stack.http.get("/api/comfyui/jobs", headers=auth(BOB)).json()["jobs"] == []
