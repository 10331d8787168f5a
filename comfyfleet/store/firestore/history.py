"""A user's job history from Firestore (records mirrored by `FirestoreMirror`).

Documents live at `<collection>/<job id>` with top-level fields only (owner, state, created_ts, ...), so the
history query is `owner == uid [and created_ts < before] order by created_ts desc limit n`: one equality, one
range on the order field. Real Firestore needs a composite index for it (owner ASC, created_ts DESC).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from comfyfleet.settings import CommonSettings
from comfyfleet.store.firestore.client import RPC_TIMEOUT_SECONDS, shared_client, short_error
from comfyfleet.store.firestore.records import job_from_record
from comfyfleet.store.history import HistoryPage, RedisHistory
from comfyfleet.store.jobrepo import JobRepo

log = logging.getLogger(__name__)


class FirestoreHistory:
    """History from Firestore; records still in Redis are shown in their fresher Redis state."""

    def __init__(self, client_factory: Callable[[], Any], collection: str, repo: JobRepo):
        self.client_factory = client_factory
        self.collection = collection
        self.repo = repo

    @classmethod
    def from_settings(cls, settings: CommonSettings, repo: JobRepo) -> FirestoreHistory:
        return cls(lambda: shared_client(settings), settings.firestore_collection, repo)

    def page(self, owner: str, limit: int, before: float | None = None) -> HistoryPage:
        from google.cloud.firestore import FieldFilter, Query

        try:
            query = self.client_factory().collection(self.collection).where(filter=FieldFilter("owner", "==", owner))
            if before is not None:
                query = query.where(filter=FieldFilter("created_ts", "<", before))
            query = query.order_by("created_ts", direction=Query.DESCENDING).limit(limit)
            docs = [d.to_dict() for d in query.stream(retry=None, timeout=RPC_TIMEOUT_SECONDS)]
        except Exception as exc:  # noqa: BLE001 - an unreachable Firestore degrades to what Redis still holds
            log.warning("job history: Firestore query failed, serving from Redis: %s", short_error(exc))
            return RedisHistory(self.repo).page(owner, limit, before)
        stored = [job_from_record(d) for d in docs if d]
        live = self.repo.get_many([j.id for j in stored])
        jobs = [fresh if fresh is not None else old for old, fresh in zip(stored, live, strict=True)]
        # The cursor is the stored float itself, so the next page's `created_ts < before` is exact.
        cursor = docs[-1].get("created_ts") if len(docs) == limit and docs[-1] else None
        return HistoryPage(jobs=jobs, next_before=cursor)
