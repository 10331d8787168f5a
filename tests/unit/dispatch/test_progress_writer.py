"""The runner's progress writer: the websocket's events never wait for a write, writes land in order, a node's
start and last step are written at once, steps in between at most once per interval, the newest at the end."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from comfyfleet.comfy.messages import Executing, ExecutionSuccess, Progress
from comfyfleet.dispatch import runner
from comfyfleet.dispatch.runner import ProgressWriter
from comfyfleet.jobs.model import Job, JobState
from comfyfleet.jobs.progress import ProgressTracker


class FakeRun:
    """What ProgressWriter uses of a JobRun, with a store whose writes take `write_seconds` each."""

    def __init__(self, write_seconds: float = 0.0):
        self.job_id = "job-1"
        self.obs = None
        self.job: Job | None = Job(id="job-1", owner="alice", workflow={}, state=JobState.RUNNING)
        self.writes: list[tuple[str | None, float]] = []  # (node, value) in the order they landed
        self.in_flight = 0
        self.overlapped = False
        self.write_seconds = write_seconds
        self.freed = 0
        self.ctx = SimpleNamespace(repo=SimpleNamespace(set_progress=self._store))

    async def _store(self, job: Job) -> None:
        self.in_flight += 1
        self.overlapped = self.overlapped or self.in_flight > 1
        await asyncio.sleep(self.write_seconds)
        self.writes.append((job.progress.node, job.progress.value))
        self.in_flight -= 1

    async def best_effort(self, fn: Any, *args: Any) -> None:
        await fn(*args)

    async def announced(self) -> None:
        return None

    async def mark_running(self) -> None:
        return None

    def free_pod(self) -> asyncio.Task[None] | None:
        self.freed += 1
        return None


def writer(run: FakeRun) -> ProgressWriter:
    return ProgressWriter(run, ProgressTracker(total_nodes=2))  # type: ignore[arg-type]


async def test_a_slow_write_never_holds_up_the_events_behind_it():
    run = FakeRun(write_seconds=0.2)
    w = writer(run)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await w.on_event(Executing("3", "p"))  # a node's start: written at once, in the background
    await w.on_event(Progress(10, 10, "3", "p"))  # its last step
    await w.on_event(ExecutionSuccess(prompt_id="p"))  # the prompt's end frees the pod without waiting
    assert run.freed == 1 and loop.time() - started < 0.1, "an event waited for a progress write"
    await w.flush()
    assert run.writes[-1] == ("3", w.latest.value) and not run.overlapped, "the node's last step is the last write"
    assert [v for _, v in run.writes] == sorted(v for _, v in run.writes), run.writes


async def test_steps_are_coalesced_and_the_newest_is_written_last(monkeypatch):
    monkeypatch.setattr(runner, "PROGRESS_INTERVAL_SECONDS", 0.05)
    run = FakeRun(write_seconds=0.01)
    w = writer(run)
    await w.on_event(Executing("3", "p"))
    for step in range(1, 20):  # 19 steps in ~19 ms: far fewer writes than steps
        await w.on_event(Progress(step, 20, "3", "p"))
        await asyncio.sleep(0.001)
    await w.flush()
    values = [v for _, v in run.writes]
    assert values == sorted(values) and len(set(values)) == len(values), run.writes
    assert len(run.writes) < 8, f"steps were not coalesced: {run.writes}"
    assert run.writes[-1][1] == w.latest.value, "the newest step is the last write"
    assert not run.overlapped


async def test_a_nodes_start_and_last_step_are_written_without_waiting_for_the_interval(monkeypatch):
    monkeypatch.setattr(runner, "PROGRESS_INTERVAL_SECONDS", 10.0)
    run = FakeRun()
    w = writer(run)
    await w.on_event(Executing("3", "p"))
    await asyncio.sleep(0.01)
    await w.on_event(Progress(5, 10, "3", "p"))  # inside the interval: waits
    await asyncio.sleep(0.01)
    assert [n for n, _ in run.writes] == ["3"]
    await w.on_event(Progress(10, 10, "3", "p"))  # the node's last step: at once
    await asyncio.sleep(0.01)
    assert [n for n, _ in run.writes] == ["3", "3"], run.writes
    await w.on_event(Executing("9", "p"))  # the next node's start: at once
    await asyncio.sleep(0.01)
    assert [n for n, _ in run.writes] == ["3", "3", "9"], run.writes
    await w.on_event(Progress(10, 10, "9", "p"))  # a node's last step and the next node's start at once: both
    await w.on_event(Executing("12", "p"))  # are written, in order (a client sees every node reach its end)
    await w.flush()
    assert [n for n, _ in run.writes] == ["3", "3", "9", "9", "12"], run.writes
    assert run.writes[3][1] >= run.writes[2][1]


async def test_nothing_is_written_once_the_job_is_final():
    run = FakeRun()
    w = writer(run)
    await w.on_event(Executing("3", "p"))
    await w.flush()
    assert len(run.writes) == 1
    run.job = run.job.model_copy(update={"state": JobState.SUCCEEDED}) if run.job else None
    w2 = writer(run)
    await w2.on_event(Executing("9", "p"))
    await w2.flush()
    assert len(run.writes) == 1
