"""The history page cursor and the backend choice (no servers)."""

from __future__ import annotations

from datetime import UTC, datetime

from comfyfleet.jobs.model import Job
from comfyfleet.settings import CommonSettings
from comfyfleet.store.history import RedisHistory, job_history, next_cursor


def job_at(second: int) -> Job:
    return Job(owner="u", workflow={}, created_at=datetime(2025, 1, 1, 0, 0, second, tzinfo=UTC))


def test_a_full_page_points_at_its_oldest_job_and_a_short_page_ends():
    page = [job_at(30), job_at(20)]
    assert next_cursor(page, fetched=2, limit=2) == job_at(20).created_at.timestamp()
    assert next_cursor(page, fetched=2, limit=3) is None
    assert next_cursor([], fetched=0, limit=3) is None


def test_redis_serves_history_unless_firestore_is_on():
    assert isinstance(job_history(CommonSettings(), repo=None), RedisHistory)  # type: ignore[arg-type]
