"""The k8s kubelet stand-in's loopback address blocks (pure; the stand-in itself runs in tests/k8s)."""

from __future__ import annotations

import pytest

from tests.k8s.kubelet import loopback_block, loopback_ip


def test_a_block_counts_hosts_1_to_254_then_moves_to_the_next_third_octet() -> None:
    block = loopback_block(300, 150, 7)
    assert block[:2] == ["127.150.7.1", "127.150.7.2"]
    assert block[253:256] == ["127.150.7.254", "127.150.8.1", "127.150.8.2"]
    assert len(set(block)) == 300 and block[-1] == "127.150.8.46"


def test_blocks_never_reach_the_one_process_per_pod_addresses() -> None:
    single = {loopback_ip(n) for n in range(1, 255)}
    assert not single & set(loopback_block(254, 1, 0))
    with pytest.raises(ValueError, match="loopback_ip"):
        loopback_block(10, 0, 0)


@pytest.mark.parametrize(("count", "second", "third"), [(0, 100, 0), (255, 100, 255), (10, 256, 0), (10, 100, -1)])
def test_impossible_blocks_are_refused(count: int, second: int, third: int) -> None:
    with pytest.raises(ValueError):
        loopback_block(count, second, third)
