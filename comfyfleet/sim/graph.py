"""Execution order and cache keys for one prompt, as ComfyUI's graph.py and caching.py decide them."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from comfyfleet.sim.catalog import is_output_node


def is_link(value: Any) -> bool:
    """A `[node_id, output_index]` reference (ComfyUI's is_link)."""
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


class DependencyCycleError(Exception):
    """The remaining nodes depend on each other."""


class ExecutionList:
    """ComfyUI's ExecutionList: nodes needed by the outputs, skipping inputs already cached.

    Nodes become available when all their uncached inputs ran; among those, the pick prefers an output
    node, then a node feeding an output, then one two steps from an output (`ux_friendly_pick_node`).
    """

    def __init__(self, prompt: dict[str, Any], is_cached: Callable[[str], bool]):
        self.prompt = prompt
        self.is_cached = is_cached
        self.pending: dict[str, bool] = {}
        self.block_count: dict[str, int] = {}
        self.blocking: dict[str, dict[str, dict[int, bool]]] = {}

    def add_node(self, unique_id: str) -> None:
        node_ids = [unique_id]
        links: list[tuple[str, int, str]] = []
        while node_ids:
            node_id = node_ids.pop()
            if node_id in self.pending:
                continue
            self.pending[node_id] = True
            self.block_count[node_id] = 0
            self.blocking[node_id] = {}
            for value in self.prompt[node_id]["inputs"].values():
                if is_link(value):
                    from_id, socket = value
                    if not self.is_cached(from_id):
                        node_ids.append(from_id)
                    links.append((from_id, socket, node_id))
        for from_id, socket, to_id in links:
            self._add_strong_link(from_id, socket, to_id)

    def _add_strong_link(self, from_id: str, socket: int, to_id: str) -> None:
        if self.is_cached(from_id):
            return
        self.add_node(from_id)
        if to_id not in self.blocking[from_id]:
            self.blocking[from_id][to_id] = {}
            self.block_count[to_id] += 1
        self.blocking[from_id][to_id][socket] = True

    def is_empty(self) -> bool:
        return not self.pending

    def next_node(self) -> str:
        """The node to run now; raises DependencyCycleError when nothing is runnable."""
        available = [n for n in self.pending if self.block_count[n] == 0]
        if not available:
            raise DependencyCycleError("Dependency cycle detected")
        return self._pick(available)

    def _pick(self, available: list[str]) -> str:
        def is_output(node_id: str) -> bool:
            return is_output_node(self.prompt[node_id]["class_type"])

        for node_id in available:
            if is_output(node_id):
                return node_id
        for node_id in available:
            if any(is_output(b) for b in self.blocking[node_id]):
                return node_id
        for node_id in available:
            for blocked in self.blocking[node_id]:
                if any(is_output(b) for b in self.blocking[blocked]):
                    return node_id
        return available[0]

    def complete(self, node_id: str) -> None:
        del self.pending[node_id]
        for blocked in self.blocking[node_id]:
            self.block_count[blocked] -= 1
        del self.blocking[node_id]


def execution_order(prompt: dict[str, Any], outputs: list[str], is_cached: Callable[[str], bool]) -> list[str]:
    """The whole order at once (for tests and planning); the executor walks an ExecutionList itself."""
    plan = ExecutionList(prompt, is_cached)
    for o in outputs:
        plan.add_node(o)
    order = []
    while not plan.is_empty():
        node_id = plan.next_node()
        order.append(node_id)
        plan.complete(node_id)
    return order


def to_hashable(obj: Any) -> Hashable:
    """Literal input values as a hashable tuple tree (1 and 1.0 compare equal, as in ComfyUI)."""
    if isinstance(obj, int | float | str | bool | type(None)):
        return obj
    if isinstance(obj, dict):
        return ("__dict__", tuple((to_hashable(k), to_hashable(v)) for k, v in sorted(obj.items())))
    if isinstance(obj, list | tuple):
        return ("__list__", tuple(to_hashable(v) for v in obj))
    return ("__unhashable__", id(obj))


def cache_keys(prompt: dict[str, Any], is_changed: Callable[[str], Any]) -> dict[str, Hashable]:
    """Each node's input signature: class, IS_CHANGED value and inputs, with links replaced by the
    ancestors' signatures. Identical signatures share cached outputs.

    is_changed returns a fresh `object()` (ComfyUI uses NaN) when the node must never hit the cache.
    """
    keys: dict[str, Hashable] = {}

    def key(node_id: str, seen: frozenset[str]) -> Hashable:
        if node_id in keys:
            return keys[node_id]
        if node_id not in prompt or node_id in seen:
            return ("__missing__", object())  # never equal to any other key
        node = prompt[node_id]
        parts: list[Hashable] = [node["class_type"], to_hashable(is_changed(node_id))]
        for name in sorted(node["inputs"]):
            value = node["inputs"][name]
            if is_link(value):
                parts.append((name, ("ANCESTOR", key(value[0], seen | {node_id}), value[1])))
            else:
                parts.append((name, to_hashable(value)))
        keys[node_id] = tuple(parts)
        return keys[node_id]

    for node_id in prompt:
        key(node_id, frozenset())
    return keys
