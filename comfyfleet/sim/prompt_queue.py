"""ComfyUI's PromptQueue: a heap ordered by `number`, the running item, and the history map."""

from __future__ import annotations

import copy
import heapq
import threading
from collections.abc import Callable
from typing import Any

# ComfyUI keeps at most this many history entries and drops the oldest first.
MAXIMUM_HISTORY_SIZE = 10000

# Queue item: (number, prompt_id, prompt, extra_data, outputs_to_execute, sensitive extra_data)
QueueItem = tuple[Any, str, dict[str, Any], dict[str, Any], list[str], dict[str, Any]]


class PromptQueue:
    """Thread-safe queue shared by the HTTP handlers and the single worker thread."""

    def __init__(self, on_update: Callable[[], None]):
        self.on_update = on_update
        self.mutex = threading.RLock()
        self.not_empty = threading.Condition(self.mutex)
        self.task_counter = 0
        self.queue: list[QueueItem] = []
        self.running: dict[int, QueueItem] = {}
        self.history: dict[str, dict[str, Any]] = {}
        self.flags: dict[str, Any] = {}

    def put(self, item: QueueItem) -> None:
        with self.mutex:
            heapq.heappush(self.queue, item)
            self.on_update()
            self.not_empty.notify()

    def get(self, timeout: float | None = None) -> tuple[QueueItem, int] | None:
        """Pop the lowest `number`; None after timeout seconds with nothing queued."""
        with self.not_empty:
            while not self.queue:
                self.not_empty.wait(timeout=timeout)
                if timeout is not None and not self.queue:
                    return None
            item = heapq.heappop(self.queue)
            item_id = self.task_counter
            self.running[item_id] = copy.deepcopy(item)
            self.task_counter += 1
            self.on_update()
            return item, item_id

    def task_done(self, item_id: int, history_result: dict[str, Any], status: dict[str, Any]) -> None:
        """Move the running item to history (sensitive data stripped) and announce the new queue size."""
        with self.mutex:
            item = self.running.pop(item_id)
            if len(self.history) > MAXIMUM_HISTORY_SIZE:
                self.history.pop(next(iter(self.history)))
            self.history[item[1]] = {
                "prompt": list(item[:5]),
                "outputs": {},
                "status": copy.deepcopy(status),
                **history_result,
            }
            self.on_update()

    def current(self) -> tuple[list[list[Any]], list[list[Any]]]:
        """(running, pending) as GET /queue lists them: 5-element lists, pending in heap order."""
        with self.mutex:
            running = [list(x[:5]) for x in self.running.values()]
            pending = [list(x[:5]) for x in copy.deepcopy(self.queue)]
            return running, pending

    def running_ids(self) -> list[str]:
        with self.mutex:
            return [x[1] for x in self.running.values()]

    def remaining(self) -> int:
        with self.mutex:
            return len(self.queue) + len(self.running)

    def delete_pending(self, prompt_id: str) -> bool:
        with self.mutex:
            for i, item in enumerate(self.queue):
                if item[1] == prompt_id:
                    self.queue.pop(i)
                    heapq.heapify(self.queue)
                    self.on_update()
                    return True
            return False

    def wipe_queue(self) -> None:
        with self.mutex:
            self.queue = []
            self.on_update()

    def get_history(
        self, prompt_id: str | None = None, max_items: int | None = None, offset: int = -1
    ) -> dict[str, Any]:
        with self.mutex:
            if prompt_id is not None:
                return {prompt_id: copy.deepcopy(self.history[prompt_id])} if prompt_id in self.history else {}
            out: dict[str, Any] = {}
            if offset < 0 and max_items is not None:
                offset = len(self.history) - max_items
            for i, key in enumerate(self.history):
                if i >= offset:
                    out[key] = copy.deepcopy(self.history[key])
                    if max_items is not None and len(out) >= max_items:
                        break
            return out

    def delete_history(self, prompt_id: str) -> None:
        with self.mutex:
            self.history.pop(prompt_id, None)

    def wipe_history(self) -> None:
        with self.mutex:
            self.history = {}

    def set_flag(self, name: str, value: Any) -> None:
        with self.mutex:
            self.flags[name] = value
            self.not_empty.notify()

    def take_flags(self) -> dict[str, Any]:
        with self.mutex:
            flags, self.flags = self.flags, {}
            return flags
