"""gctune.settle: start-up's objects frozen, the young generation's threshold raised (never lowered)."""

import gc

import pytest

from comfyfleet import gctune


@pytest.fixture
def restored_gc():
    threshold = gc.get_threshold()
    yield
    gc.set_threshold(*threshold)
    gc.unfreeze()


@pytest.mark.parametrize(("before", "after"), [
    ((700, 10, 10), (gctune.GEN0_THRESHOLD, 10, 10)),
    ((50_000, 5, 20), (50_000, 5, 20)),  # a process that set a higher one keeps it
])
def test_settle(restored_gc, before, after):
    gc.set_threshold(*before)
    gc.unfreeze()
    gctune.settle()
    assert gc.get_threshold() == after
    assert gc.get_freeze_count() > 0
