from __future__ import annotations

from collections.abc import Iterator

import pytest

from comfyfleet.observability import logs


@pytest.fixture(autouse=True)
def fresh_log_context() -> Iterator[None]:
    """Each test starts with no bound log fields: tests elsewhere in the session run dispatch code in this
    thread's context (in-process engines, async tests), and what they bound must not leak into these checks."""
    token = logs._context.set(None)
    yield
    logs._context.reset(token)
