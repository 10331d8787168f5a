"""The capacity-aware scheduler against a real Redis: priorities, backfill, leases, fail-fast."""

from __future__ import annotations

import uuid

import pytest
import redis

from comfyfleet.dispatch.service import Dispatcher
from comfyfleet.jobs.model import ErrorCode, Job, JobState
from comfyfleet.jobs.templates import TEMPLATES
from comfyfleet.settings import DispatchSettings


@pytest.fixture
def dispatcher(redis_server) -> Dispatcher:
    settings = DispatchSettings(redis_url=redis_server.url, redis_prefix="s" + uuid.uuid4().hex[:8])
    return Dispatcher(redis.Redis.from_url(redis_server.url), settings)


def add_pod(d: Dispatcher, pod_id: str, *, checkpoints=("sd_xl_base_1.0.safetensors",), loras=(), pool="default"):
    d.registry.upsert(pod_id, f"http://{pod_id}:8188", pool)
    d.registry.record_probe_ok(pod_id, checkpoints=list(checkpoints), loras=list(loras), queue_remaining=0, info={})


def job(priority=5, lora=None, pool=None) -> Job:
    wf = {k: dict(v, inputs=dict(v["inputs"])) for k, v in TEMPLATES["txt2img"].items()}
    if lora:
        wf["10"] = {"class_type": "LoraLoader", "inputs": {"model": ["4", 0], "clip": ["4", 1], "lora_name": lora,
                                                           "strength_model": 1, "strength_clip": 1}}
    return Job(owner="alice", workflow=wf, priority=priority, pool=pool)


def test_highest_priority_first_fifo_within_a_priority(dispatcher):
    add_pod(dispatcher, "a")
    low, high1, high2 = job(2), job(9), job(9)
    for j in (low, high1, high2):
        dispatcher.submit(j)
    order = []
    for _ in range(3):
        claim = dispatcher.scheduler.claim()
        order.append(claim.job_id)
        dispatcher.registry.release_lease(claim.endpoint_id, claim.job_id)
    assert order == [high1.id, high2.id, low.id]


def test_no_free_pod_means_nothing_leaves_the_queue(dispatcher):
    add_pod(dispatcher, "a")
    first, second = job(), job()
    dispatcher.submit(first)
    dispatcher.submit(second)
    claim = dispatcher.scheduler.claim()
    assert claim.job_id == first.id
    assert dispatcher.scheduler.claim() is None, "the only pod is leased: the second job must stay queued"
    assert dispatcher.stats().waiting == 1
    assert dispatcher.repo.get(first.id).state is JobState.DISPATCHED
    assert dispatcher.repo.get(second.id).state is JobState.QUEUED
    dispatcher.registry.release_lease("a", first.id)
    assert dispatcher.scheduler.claim().job_id == second.id


def test_backfill_skips_a_job_whose_only_pod_is_busy(dispatcher):
    add_pod(dispatcher, "plain")
    add_pod(dispatcher, "pixel", loras=("pixel.safetensors",))
    needs_pixel, needs_pixel_too, plain = job(9, lora="pixel.safetensors"), job(9, lora="pixel.safetensors"), job(1)
    for j in (needs_pixel, needs_pixel_too, plain):
        dispatcher.submit(j)
    c1 = dispatcher.scheduler.claim()
    assert (c1.job_id, c1.endpoint_id) == (needs_pixel.id, "pixel")
    c2 = dispatcher.scheduler.claim()
    assert (c2.job_id, c2.endpoint_id) == (plain.id, "plain"), "the free plain pod serves the low-priority job"
    assert dispatcher.repo.get(needs_pixel_too.id).state is JobState.QUEUED


def test_job_no_ready_pod_can_run_fails_fast(dispatcher):
    add_pod(dispatcher, "a")
    doomed = job(lora="nowhere.safetensors")
    dispatcher.submit(doomed)
    assert dispatcher.scheduler.claim() is None
    failed = dispatcher.repo.get(doomed.id)
    assert failed.state is JobState.FAILED and failed.error.code is ErrorCode.NO_CAPABLE_WORKER
    assert "nowhere.safetensors" in failed.error.message
    assert dispatcher.stats().waiting == 0


def test_jobs_wait_when_the_pool_is_empty_or_unhealthy(dispatcher):
    waiting = job()
    dispatcher.submit(waiting)
    assert dispatcher.scheduler.claim() is None
    add_pod(dispatcher, "a")
    dispatcher.registry.mark_unhealthy("a", "down")
    assert dispatcher.scheduler.claim() is None
    assert dispatcher.repo.get(waiting.id).state is JobState.QUEUED, "no healthy pod: wait, do not fail"
    add_pod(dispatcher, "a")
    assert dispatcher.scheduler.claim().job_id == waiting.id


def test_pool_is_respected(dispatcher):
    add_pod(dispatcher, "gpu-1", pool="gpu")
    add_pod(dispatcher, "cpu-1", pool="cpu")
    j = job(pool="cpu")
    dispatcher.submit(j)
    assert dispatcher.scheduler.claim().endpoint_id == "cpu-1"


def test_lease_is_exclusive_and_expires(dispatcher):
    add_pod(dispatcher, "a")
    reg = dispatcher.registry
    assert reg.try_lease("a", "job1", 0.3)
    assert not reg.try_lease("a", "job2", 5)
    assert not reg.release_lease("a", "job2"), "only the holder may release"
    assert reg.renew_lease("a", "job1", 0.3)
    import time

    time.sleep(0.5)
    assert reg.leases() == {}, "a lease held by a dead worker expires"
    assert reg.try_lease("a", "job2", 5)


def test_cancel_of_a_queued_job_removes_it(dispatcher):
    add_pod(dispatcher, "a")
    j = job()
    dispatcher.submit(j)
    cancelled = dispatcher.cancel(j.id)
    assert cancelled.state is JobState.CANCELLED
    assert dispatcher.scheduler.claim() is None, "a cancelled job never runs"


def test_idempotent_submit_returns_the_first_job(dispatcher):
    a = job()
    a.idempotency_key = "k1"
    b = job()
    b.idempotency_key = "k1"
    first, created = dispatcher.submit(a)
    again, created_again = dispatcher.submit(b)
    assert created and not created_again and again.id == first.id
    assert dispatcher.stats().waiting == 1


def test_prompts_no_live_job_accounts_for_are_foreign(dispatcher):
    from comfyfleet.dispatch.health import HealthMonitor
    from comfyfleet.jobs.states import transition

    add_pod(dispatcher, "a")
    monitor = HealthMonitor(dispatcher.registry, dispatcher.scheduler, interval=1, timeout=1, unhealthy_after=2)
    leased, orphaned, finished = job(), job(), job()
    for j in (leased, orphaned, finished):
        dispatcher.submit(j)
    claim = dispatcher.scheduler.claim()
    assert claim.job_id == leased.id
    # `orphaned` ran on pod a and its RQ worker died: still dispatched there, no lease any more.
    dispatcher.repo.update(orphaned.id, lambda j: transition(j, JobState.DISPATCHED, endpoint="a"))
    dispatcher.repo.update(finished.id, lambda j: transition(j, JobState.FAILED))
    on_pod = [leased.id, orphaned.id, finished.id, "someone-elses-prompt"]
    assert monitor._foreign_prompts("a", on_pod) == [finished.id, "someone-elses-prompt"]
    assert monitor._foreign_prompts("a", []) == []


def test_a_backlog_that_cannot_run_never_hides_a_runnable_job(dispatcher):
    """Issue 9 'starvation': more unrunnable jobs than the look-ahead window, at one priority, ahead of a job a
    free pod can run. Jobs for a pool with no pod are parked; jobs for models nobody has fail fast."""
    add_pod(dispatcher, "a")
    ghosts = [job(10, pool="ghost") for _ in range(dispatcher.settings.schedule_window + 6)]
    doomed = [job(10, lora="nowhere.safetensors") for _ in range(dispatcher.settings.schedule_window + 6)]
    for j in ghosts + doomed:
        dispatcher.submit(j)
    runnable = job(10)
    dispatcher.submit(runnable)
    claim = dispatcher.scheduler.claim()
    assert claim is not None and claim.job_id == runnable.id
    assert all(dispatcher.repo.get(j.id).state is JobState.QUEUED for j in ghosts), "parked, still queued"
    assert all(dispatcher.repo.get(j.id).error.code is ErrorCode.NO_CAPABLE_WORKER for j in doomed)
    stats = dispatcher.stats()
    assert stats.waiting == len(ghosts) and dispatcher.queued_by_pool() == {"ghost": len(ghosts)}
    # The pool appears: its parked jobs go back to the front of their queue, oldest first.
    add_pod(dispatcher, "g", pool="ghost")
    assert dispatcher.scheduler.claim().job_id == ghosts[0].id


def test_an_unreadable_record_is_quarantined_and_the_pass_goes_on(dispatcher):
    add_pod(dispatcher, "a")
    bad, good = job(), job()
    dispatcher.submit(bad)
    dispatcher.submit(good)
    # A value nested deeper than any JSON parser here accepts, as a poisoned write would leave it.
    dispatcher.conn.hset(dispatcher.keys.job(bad.id), "workflow", "[" * 100_000 + "]" * 100_000)
    dispatcher.conn.hset(dispatcher.keys.job(bad.id), "needs", "{not json")
    claim = dispatcher.scheduler.claim()
    assert claim is not None and claim.job_id == good.id
    quarantined = dispatcher.repo.get(bad.id)
    assert quarantined.state is JobState.FAILED and quarantined.error.code is ErrorCode.INTERNAL
    assert "workflow" in quarantined.error.details["corrupt_fields"]
    assert dispatcher.stats().failed == 1
    assert dispatcher.repo.get(bad.id).state is JobState.FAILED, "readers keep getting the failed job"


def test_one_pass_assigns_every_free_pod(dispatcher):
    for i in range(5):
        add_pod(dispatcher, f"p{i}")
    jobs = [job() for _ in range(7)]
    for j in jobs:
        dispatcher.submit(j)
    claims = dispatcher.scheduler.claim_batch(10, owner="d1")
    assert [c.job_id for c in claims] == [j.id for j in jobs[:5]]
    assert sorted(c.endpoint_id for c in claims) == [f"p{i}" for i in range(5)]
    assert dispatcher.scheduler.claim_batch(10, owner="d1") == [], "every pod is leased"
    assert dispatcher.stats().waiting == 2


def test_jobs_of_a_dead_dispatcher_are_adopted_with_their_leases(dispatcher):
    import time

    add_pod(dispatcher, "a")
    j = job()
    dispatcher.submit(j)
    [claim] = dispatcher.scheduler.claim_batch(1, owner="dead")
    assert dispatcher.scheduler.adopt_expired("alive", 5) == [], "its deadline has not passed"
    dispatcher.conn.zadd(dispatcher.keys.inflight, {j.id: time.time() - 1})  # as if it stopped renewing
    [adopted] = dispatcher.scheduler.adopt_expired("alive", 5)
    assert (adopted.job_id, adopted.endpoint_id, adopted.adopted) == (j.id, "a", True)
    assert dispatcher.registry.leases() == {"a": j.id}, "the endpoint stays leased to the job"
    assert dispatcher.conn.hget(dispatcher.keys.inflight_owner, j.id) == b"alive"
    assert dispatcher.scheduler.adopt_expired("third", 5) == [], "adopted once"


def test_prefetch_commits_one_job_ahead_and_promotes_it(dispatcher):
    dispatcher.registry.upsert("a", "http://a:8188", "default", prefetch=1)
    dispatcher.registry.record_probe_ok("a", checkpoints=["sd_xl_base_1.0.safetensors"], loras=[],
                                        queue_remaining=0, info={})
    first, second, third = job(), job(), job()
    for j in (first, second, third):
        dispatcher.submit(j)
    claims = dispatcher.scheduler.claim_batch(5, owner="d1")
    assert [(c.job_id, c.prefetched) for c in claims] == [(first.id, False), (second.id, True)], \
        "one job runs, one is committed behind it, no third"
    assert dispatcher.registry.next_leases(["a"]) == {"a": second.id}
    assert dispatcher.scheduler.claim_batch(5, owner="d1") == []
    dispatcher.registry.release_lease("a", first.id)
    assert dispatcher.registry.leases() == {"a": second.id}, "the prefetched job moved up"
    [c] = dispatcher.scheduler.claim_batch(5, owner="d1")
    assert (c.job_id, c.prefetched) == (third.id, True)


def test_an_idle_pod_is_preferred_over_a_prefetch_slot(dispatcher):
    dispatcher.registry.upsert("a", "http://a:8188", "default", prefetch=1)
    dispatcher.registry.record_probe_ok("a", checkpoints=["sd_xl_base_1.0.safetensors"], loras=[],
                                        queue_remaining=0, info={})
    dispatcher.submit(job())
    dispatcher.scheduler.claim_batch(1, owner="d1")
    add_pod(dispatcher, "b")
    second = job()
    dispatcher.submit(second)
    [c] = dispatcher.scheduler.claim_batch(1, owner="d1")
    assert (c.job_id, c.endpoint_id, c.prefetched) == (second.id, "b", False)


def test_a_field_two_writers_change_is_never_lost(dispatcher):
    """The runner and the webhook deliverer both rewrite a job's delivery list: a write made from a stale read
    of it is refused (and retried from a fresh read by update()), never silently dropping the other's change."""
    import pytest

    from comfyfleet.jobs.model import WebhookDelivery
    from comfyfleet.store.jobrepo import StateChanged

    j = job()
    dispatcher.submit(j)
    stale = dispatcher.repo.get(j.id)
    started = WebhookDelivery(id="msg_1_started", event="job.started")
    dispatcher.repo.update(j.id, lambda x: x.model_copy(update={"webhook_deliveries": [started]}))
    delivered = started.model_copy(update={"state": "delivered", "attempts": 1})
    with pytest.raises(StateChanged):
        dispatcher.repo.write(stale, stale.model_copy(update={"webhook_deliveries": [delivered]}))
    fresh = dispatcher.repo.get(j.id)
    dispatcher.repo.write(fresh, fresh.model_copy(update={"webhook_deliveries": [delivered]}))
    assert dispatcher.repo.get(j.id).webhook_deliveries == [delivered]


def test_a_new_record_leaves_out_its_default_fields_and_readers_see_the_defaults(dispatcher):
    from comfyfleet.jobs.model import ALWAYS_STORED
    from comfyfleet.store.jobrepo import NEEDS_FIELD

    j = job(priority=3, pool="gpu-a").model_copy(update={"timeout_seconds": 60})
    dispatcher.submit(j)
    stored = {k.decode() for k in dispatcher.conn.hkeys(dispatcher.keys.job(j.id))}
    assert stored == ALWAYS_STORED | {NEEDS_FIELD, "pool", "timeout_seconds"}
    assert dispatcher.repo.get(j.id).model_dump(exclude={"workflow"}) == j.model_dump(exclude={"workflow"})
    [compact] = dispatcher.repo.compact_many([j.id])
    assert (compact["pool"], compact["timeout_seconds"], compact["endpoint"]) == ("gpu-a", 60, None)
    plain = job()
    dispatcher.submit(plain)
    [compact] = dispatcher.repo.compact_many([plain.id])
    assert (compact["priority"], compact["timeout_seconds"], compact["pool"]) == (5, 300, None)
    # a field that changes is stored from then on
    dispatcher.repo.update(plain.id, lambda x: x.model_copy(update={"cancel_requested": True}))
    assert dispatcher.conn.hget(dispatcher.keys.job(plain.id), "cancel_requested") == b"true"


def test_a_claimed_job_leaves_the_queue_timeout_index(dispatcher):
    add_pod(dispatcher, "a")
    first, second = job(), job()
    dispatcher.submit(first)
    dispatcher.submit(second)
    assert dispatcher.conn.zcard(dispatcher.keys.queue_deadlines) == 2
    [c] = dispatcher.scheduler.claim_batch(1, owner="d1")
    assert c.job_id == first.id
    assert [i.decode() for i in dispatcher.conn.zrange(dispatcher.keys.queue_deadlines, 0, -1)] == [second.id]
