"""Overall job progress from ComfyUI's per-node events (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field

from comfyfleet.jobs.model import Progress


@dataclass
class ProgressTracker:
    """Counts finished nodes (run or cached) and the running node's sampler steps into one fraction."""

    total_nodes: int
    done: set[str] = field(default_factory=set)
    current: str | None = None
    value: int = 0
    max: int = 0

    def cached(self, nodes: list[str]) -> Progress:
        self.done.update(nodes)
        return self.snapshot()

    def executing(self, node: str | None) -> Progress:
        if self.current is not None:
            self.done.add(self.current)
        self.current, self.value, self.max = node, 0, 0
        return self.snapshot()

    def step(self, value: float, max_: float, node: str | None) -> Progress:
        if node is not None and node != self.current:
            self.executing(node)
        self.value, self.max = int(value), int(max_)
        return self.snapshot()

    def snapshot(self) -> Progress:
        total = max(self.total_nodes, 1)
        running_share = (self.value / self.max) if self.max else 0.0
        finished = len(self.done - {self.current}) if self.current else len(self.done)
        fraction = min((finished + running_share) / total, 0.99)  # 1.0 only when the job succeeded
        return Progress(value=self.value, max=self.max, node=self.current, fraction=round(fraction, 4))
