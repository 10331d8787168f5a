"""The operator's registry gateway against a real Redis: prefetch published with each pod, and the
dispatcher roster read back as dispatch slots.

The roster here is written by the test in the layout the dispatcher keeps (issue 8: a hash
`{prefix}:dispatcher:{name}` and a member of `{prefix}:dispatchers` scored with its expiry), to pin
the reader to that layout; tests/k8s/test_capacity.py checks it against real dispatcher processes.
"""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from comfyfleet.dispatch.service import Dispatcher
from comfyfleet.operator.capacity import DispatchSlots, assess_capacity, live_slots
from comfyfleet.operator.pods import endpoint_id_for
from comfyfleet.operator.publish import PoolPublisher, read_dispatchers
from comfyfleet.settings import DispatchSettings
from tests.support.redis import RedisServer


@pytest.fixture
def dispatcher(redis_server: RedisServer) -> Dispatcher:
    settings = DispatchSettings(redis_url=redis_server.url, redis_prefix="p" + uuid.uuid4().hex[:8])
    return Dispatcher(redis.Redis.from_url(redis_server.url), settings)


def test_prefetch_is_published_with_each_pod_and_follows_the_spec(dispatcher: Dispatcher) -> None:
    publisher = PoolPublisher(dispatcher, "ns", "sdxl")
    pod = endpoint_id_for("ns", "sdxl-abcde")
    serving = {pod: "http://10.0.0.7:8188"}
    publisher.publish(serving, publisher.published(), 1)
    endpoint = dispatcher.registry.get(pod)
    assert endpoint is not None and endpoint.prefetch == 1 and endpoint.pool == "sdxl"
    assert dispatcher.conn.hget(dispatcher.keys.pod(pod), "prefetch") == b"1"

    # A probe marks it healthy; the SRE turns prefetch off: the same pod is republished with 0 and
    # keeps its health (it is not sent back to "unprobed").
    dispatcher.registry.record_probe_ok(pod, checkpoints=[], loras=[], queue_remaining=0, info={})
    publisher.publish(serving, publisher.published(), 0)
    endpoint = dispatcher.registry.get(pod)
    assert endpoint is not None and endpoint.prefetch == 0 and endpoint.healthy


def test_static_endpoints_default_to_no_prefetch(dispatcher: Dispatcher) -> None:
    dispatcher.registry.upsert("url:http://127.0.0.1:8188", "http://127.0.0.1:8188")
    endpoint = dispatcher.registry.get("url:http://127.0.0.1:8188")
    assert endpoint is not None and endpoint.prefetch == 0


def write_dispatcher(d: Dispatcher, name: str, slots: int, in_flight: int, expires_at: float) -> None:
    d.conn.hset(d.keys.dispatcher(name), mapping={"slots": slots, "in_flight": in_flight, "last_tick": time.time()})
    d.conn.zadd(d.keys.dispatchers, {name: expires_at})


def test_roster_is_read_as_live_dispatch_slots(dispatcher: Dispatcher) -> None:
    now = time.time()
    assert read_dispatchers(dispatcher.conn, dispatcher.keys, now) == []
    write_dispatcher(dispatcher, "dispatcher-a", 256, 3, now + 2)
    write_dispatcher(dispatcher, "dispatcher-b", 256, 0, now + 2)
    write_dispatcher(dispatcher, "dispatcher-dead", 256, 7, now - 5)  # SIGKILLed: its score ran out
    dispatcher.conn.zadd(dispatcher.keys.dispatchers, {"dispatcher-nohash": now + 2})  # hash not written yet
    records = read_dispatchers(dispatcher.conn, dispatcher.keys, now)
    assert {r.name for r in records} == {"dispatcher-a", "dispatcher-b", "dispatcher-nohash"}
    assert live_slots(records, now) == DispatchSlots(dispatchers=3, slots=512, in_flight=3)
    # Later, when a and b have not renewed their scores, they count as dead too.
    assert live_slots(read_dispatchers(dispatcher.conn, dispatcher.keys, now + 3), now + 3) == DispatchSlots()


def test_fleet_demand_spans_pools_and_decides_the_condition(dispatcher: Dispatcher) -> None:
    now = time.time()
    write_dispatcher(dispatcher, "only", 2, 0, now + 2)
    for pool, pods, prefetch in (("a", 2, 0), ("b", 1, 1)):
        publisher = PoolPublisher(dispatcher, "ns", pool)
        serving = {endpoint_id_for("ns", f"{pool}-{n}"): f"http://10.0.1.{n}:8188" for n in range(pods)}
        publisher.publish(serving, {}, prefetch)
        for endpoint_id in serving:
            dispatcher.registry.record_probe_ok(endpoint_id, checkpoints=[], loras=[], queue_remaining=0, info={})
    publisher = PoolPublisher(dispatcher, "ns", "a")
    demand = publisher.fleet_demand()
    assert (demand.ready, demand.prefetching, demand.needed) == (3, 1, 4)
    verdict = assess_capacity(live_slots(publisher.dispatchers(now), now), demand)
    assert (verdict.status, verdict.reason, verdict.shortfall) == ("False", "NotEnoughDispatchSlots", 2)
