"""Redis key names, in one place, under a configurable prefix."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

PRIORITIES = tuple(range(10, 0, -1))  # highest first: the order RQ workers look at the queues


@dataclass(frozen=True)
class Keys:
    prefix: str = "cf"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def idempotency(self, owner: str, key: str) -> str:
        """One key per (owner, key) pair: hashed with the owner's length, so no owner or key containing `:` can
        land on another owner's slot (`acme` + `bob:K` and `acme:bob` + `K` differ)."""
        digest = hashlib.sha256(f"{len(owner)}:{owner}:{key}".encode()).hexdigest()
        return f"{self.prefix}:idem:{digest}"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}:events:{job_id}"

    def owner_jobs(self, owner: str) -> str:
        return f"{self.prefix}:owner:{owner}"

    @property
    def all_jobs(self) -> str:
        return f"{self.prefix}:jobs"

    @property
    def dirty(self) -> str:
        """Job ids changed since the durable mirror (Firestore) last wrote them."""
        return f"{self.prefix}:mirror:dirty"

    @property
    def mirror_inflight(self) -> str:
        """Job ids the mirror is writing now (moved back to dirty if the write fails)."""
        return f"{self.prefix}:mirror:inflight"

    @property
    def mirror_lock(self) -> str:
        """Lease that makes one process the mirror's single writer."""
        return f"{self.prefix}:mirror:lock"

    @property
    def stats(self) -> str:
        return f"{self.prefix}:stats"

    @property
    def pods(self) -> str:
        return f"{self.prefix}:pods"

    def pod(self, pod_id: str) -> str:
        return f"{self.prefix}:pod:{pod_id}"

    def catalog(self, pod_id: str) -> str:
        return f"{self.prefix}:catalog:{pod_id}"

    def lease(self, pod_id: str) -> str:
        return f"{self.prefix}:lease:{pod_id}"

    def lease_next(self, pod_id: str) -> str:
        """The lease of the job committed to a pod ahead of the running one (pools with prefetch 1)."""
        return f"{self.prefix}:lease:{pod_id}:next"

    def claim(self, job_id: str) -> str:
        return f"{self.prefix}:claim:{job_id}"

    @property
    def schedule_lock(self) -> str:
        return f"{self.prefix}:sched:lock"

    @property
    def wake(self) -> str:
        """Pub/sub channel: a job was queued, a pod freed or turned healthy; dispatchers run a claim pass."""
        return f"{self.prefix}:sched:wake"

    @property
    def cancel(self) -> str:
        """Pub/sub channel: the id of a job whose cancel was requested (its dispatcher interrupts it at once)."""
        return f"{self.prefix}:sched:cancel"

    @property
    def inflight(self) -> str:
        """Sorted set: job id -> deadline (unix s) by which its dispatcher must renew it, or another adopts it."""
        return f"{self.prefix}:inflight"

    @property
    def inflight_owner(self) -> str:
        """Hash: job id -> the dispatcher that runs it (only the owner may renew its deadline)."""
        return f"{self.prefix}:inflight:owner"

    @property
    def queue_deadlines(self) -> str:
        """Sorted set: queued job id -> the earliest its queue timeout can fall due (unix s); the sweep reads only
        the due ones (fairuse/queue_timeout.py)."""
        return f"{self.prefix}:queue-deadlines"

    def parked(self, pool: str) -> str:
        """Sorted set: queued jobs for a pool with no healthy endpoint at all, kept out of the claim scan."""
        return f"{self.prefix}:parked:{pool}"

    @property
    def parked_pools(self) -> str:
        return f"{self.prefix}:parked-pools"

    @property
    def dispatchers(self) -> str:
        """Sorted set: dispatcher name -> unix time after which it counts as dead."""
        return f"{self.prefix}:dispatchers"

    def dispatcher(self, name: str) -> str:
        """Hash of one dispatcher process: slots, in_flight, last_tick."""
        return f"{self.prefix}:dispatcher:{name}"

    def queue_name(self, priority: int) -> str:
        """RQ queue name for a priority level (RQ itself prefixes its keys with rq:queue:)."""
        return f"{self.prefix}-p{priority:02d}"

    def queue_names(self) -> list[str]:
        return [self.queue_name(p) for p in PRIORITIES]


def as_text(value: object) -> str:
    """A Redis reply as text (replies are bytes; typed as bytes | str by redis-py)."""
    return value.decode() if isinstance(value, bytes) else str(value)
