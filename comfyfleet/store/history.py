"""A user's job history, newest first: from Redis by default, from Firestore when the mirror is on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from comfyfleet.jobs.model import Job
from comfyfleet.settings import CommonSettings
from comfyfleet.store.jobrepo import JobRepo


@dataclass(frozen=True)
class HistoryPage:
    jobs: list[Job]
    # Pass as `before` to get the next (older) page; None when this page is the last.
    next_before: float | None


class JobHistory(Protocol):
    """Pages through one owner's jobs by creation time, newest first (blocking: call it from a thread)."""

    def page(self, owner: str, limit: int, before: float | None = None) -> HistoryPage: ...


def next_cursor(jobs: list[Job], fetched: int, limit: int) -> float | None:
    """A full page may have more behind it; the cursor is the oldest creation time shown."""
    return jobs[-1].created_at.timestamp() if fetched == limit and jobs else None


class RedisHistory:
    """Jobs still in Redis (finished ones expire after result_ttl_seconds)."""

    def __init__(self, repo: JobRepo):
        self.repo = repo

    def page(self, owner: str, limit: int, before: float | None = None) -> HistoryPage:
        ids = self.repo.owner_job_ids(owner, limit, before)
        jobs = [j for j in self.repo.get_many(ids) if j is not None]
        return HistoryPage(jobs=jobs, next_before=next_cursor(jobs, len(ids), limit))


def job_history(settings: CommonSettings, repo: JobRepo) -> JobHistory:
    if settings.firestore_enabled:
        from comfyfleet.store.firestore import FirestoreHistory  # optional dependency, imported only when used

        return FirestoreHistory.from_settings(settings, repo)
    return RedisHistory(repo)
