"""Which ComfyUI pod runs a job: pure policy over a snapshot of the registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from comfyfleet.jobs.workflow import ModelNeeds


@dataclass(frozen=True)
class Candidate:
    """A registered ComfyUI endpoint as the scheduler sees it at one instant."""

    id: str
    pool: str = "default"
    healthy: bool = True
    busy: bool = False
    checkpoints: frozenset[str] = field(default_factory=frozenset)
    loras: frozenset[str] = field(default_factory=frozenset)
    last_checkpoint: str | None = None
    last_assigned_at: float = 0.0
    # Prompts the pod itself reports as queued or running (someone else may use it too).
    queue_remaining: int = 0
    # Prompts the pool lets us commit to the pod ahead of the running one (0 or 1).
    prefetch: int = 0
    # This candidate is the pod's prefetch slot: its job queues on the pod behind the running one.
    ahead: int = 0

    def can_run(self, needs: ModelNeeds) -> bool:
        return not needs.missing_on(self.checkpoints, self.loras)


class Capability(StrEnum):
    """Whether any pod could ever run a job, used to fail fast instead of waiting forever."""

    FREE = "free"  # a healthy pod with the models is free now
    BUSY = "busy"  # healthy pods have the models but all are busy: wait
    NO_ENDPOINTS = "no_endpoints"  # no healthy pod in the pool at all: wait (the pool may scale up)
    MISSING_MODELS = "missing_models"  # healthy pods exist, none has the models: fail fast


def in_pool(c: Candidate, pool: str | None) -> bool:
    return pool is None or c.pool == pool


def capability(candidates: list[Candidate], needs: ModelNeeds, pool: str | None) -> Capability:
    healthy = [c for c in candidates if c.healthy and in_pool(c, pool)]
    if not healthy:
        return Capability.NO_ENDPOINTS
    able = [c for c in healthy if c.can_run(needs)]
    if not able:
        return Capability.MISSING_MODELS
    return Capability.FREE if any(not c.busy for c in able) else Capability.BUSY


def select_endpoint(
    candidates: list[Candidate], needs: ModelNeeds, pool: str | None = None, prefer: str | None = None
) -> Candidate | None:
    """The best free pod for a job, or None.

    Order: healthy, free, in the pool and holding every model are required; then the pod the job ran on
    before (`prefer`, it may still hold the prompt), then an idle pod before a prefetch slot behind a running
    job, then warm weights (last ran the same checkpoint), then least loaded, then least recently assigned
    (round robin among equals), then id for determinism.
    """
    free = [c for c in candidates if c.healthy and not c.busy and in_pool(c, pool) and c.can_run(needs)]
    if not free:
        return None
    wanted_ckpts = needs.checkpoints

    def rank(c: Candidate) -> tuple[int, int, int, int, float, str]:
        warm = 0 if (c.last_checkpoint is not None and c.last_checkpoint in wanted_ckpts) else 1
        return (0 if c.id == prefer else 1, c.ahead, warm, c.queue_remaining, c.last_assigned_at, c.id)

    return min(free, key=rank)
