"""Redis key names, in one place, under a configurable prefix."""

from __future__ import annotations

from dataclasses import dataclass

PRIORITIES = tuple(range(10, 0, -1))  # highest first: the order RQ workers look at the queues


@dataclass(frozen=True)
class Keys:
    prefix: str = "cf"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def idempotency(self, owner: str, key: str) -> str:
        return f"{self.prefix}:idem:{owner}:{key}"

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

    def claim(self, job_id: str) -> str:
        return f"{self.prefix}:claim:{job_id}"

    @property
    def schedule_lock(self) -> str:
        return f"{self.prefix}:sched:lock"

    @property
    def wake(self) -> str:
        return f"{self.prefix}:sched:wake"

    # capacity: lead owns this file. The dispatcher roster of issue 8 (its writer is the dispatcher;
    # the operator reads it to compare dispatch slots with ready pods).
    @property
    def dispatchers(self) -> str:
        """Sorted set: member = a live dispatcher's name, score = unix time after which it counts as dead."""
        return f"{self.prefix}:dispatchers"

    def dispatcher(self, name: str) -> str:
        """Hash of one dispatcher process: slots (its cap), in_flight, last_tick (unix seconds)."""
        return f"{self.prefix}:dispatcher:{name}"

    def queue_name(self, priority: int) -> str:
        """RQ queue name for a priority level (RQ itself prefixes its keys with rq:queue:)."""
        return f"{self.prefix}-p{priority:02d}"

    def queue_names(self) -> list[str]:
        return [self.queue_name(p) for p in PRIORITIES]
