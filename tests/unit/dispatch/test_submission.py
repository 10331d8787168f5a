"""Pure parts of the one-call submit: RQ's clock stamp and the job ids it is given."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from rq.utils import utcformat

from comfyfleet.dispatch.submission import rq_stamp
from comfyfleet.jobs.model import new_job_id


@pytest.mark.parametrize("now_ns", [0, 1_796_187_900_000_001_000, 1_796_187_900_999_999_999,
                                    1_796_187_901_000_000_000, 1_700_000_000_123_456_789, 951_782_400_500_000_000])
def test_the_stamp_is_rqs_utcformat_of_the_clock(now_ns):
    when = datetime.fromtimestamp(now_ns // 1000 / 1e6, UTC).replace(tzinfo=None)
    assert rq_stamp(now_ns) == utcformat(when)


def test_stamps_of_one_second_and_the_next_share_no_stale_text():
    second = 1_796_187_900_000_000_000
    assert [rq_stamp(second + d) for d in (5_000, 999_999_000, 1_000_000_000)] == [
        "2026-12-02T05:05:00.000005Z", "2026-12-02T05:05:00.999999Z", "2026-12-02T05:05:01.000000Z"]


def test_job_ids_are_version_4_uuids_in_their_canonical_text():
    ids = [new_job_id() for _ in range(5000)]
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 4 and parsed.variant == uuid.RFC_4122
    assert len(set(ids)) == len(ids)
    # every variant digit (8, 9, a, b) and every digit elsewhere turns up: the bits are random, not fixed
    assert {text[19] for text in ids} == set("89ab")
    assert set("".join(text[:8] for text in ids)) == set("0123456789abcdef")
