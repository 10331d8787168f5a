from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.redis import RedisServer
from tests.support.stack import Stack


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def sim_factory(tmp_path: Path) -> Iterator[Callable[..., object]]:
    from tests.support.sim import start_sim  # the simulator helper, imported only by tests that use it

    started: list = []

    def make(**knobs: object):
        sim = start_sim(tmp_path / f"sim{len(started)}", **knobs)
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()


@pytest.fixture
def stack_factory(tmp_path: Path, redis_server: RedisServer) -> Iterator[Callable[..., Stack]]:
    stacks: list[Stack] = []

    def make(comfyui_urls: list[str], **kw: object) -> Stack:
        stack = Stack(tmp_path / f"stack{len(stacks)}", redis_server.url, comfyui_urls, **kw)  # type: ignore[arg-type]
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.stop()
