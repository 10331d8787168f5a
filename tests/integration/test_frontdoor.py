"""The front door's fast path for POST /api/comfyui/generate (api/frontdoor.py) answers exactly as the FastAPI
route does: the same requests go to two in-process APIs, one with the fast path and one without, each on its
own key prefix of one real Redis, and every answer (status, body, headers) and the request metrics agree."""

from __future__ import annotations

import asyncio
import re
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from comfyfleet.api.app import FleetApp, create_app
from comfyfleet.api.routes.generate import catalog_for
from comfyfleet.settings import ApiSettings
from tests.support.procs import free_port, wait_for
from tests.support.stack import BOB, TOKENS, auth

MAX_BODY = 4096
# Differ from job to job and run to run: compared by shape only.
VOLATILE = re.compile(r'"(jobId|createdAt|updatedAt|accessToken|accessTokenExpiresAt)":"[^"]*"|'
                      r"/api/comfyui/job/[0-9a-f-]{36}")
COMPARED_HEADERS = ("content-type", "location", "retry-after", "www-authenticate",
                    "access-control-allow-origin", "access-control-allow-credentials", "access-control-expose-headers")


def serve(app: FleetApp, port: int) -> tuple[uvicorn.Server, threading.Thread]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, loop="uvloop",
                                           http="httptools"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=20, what="in-process API")
    return server, thread


@pytest.fixture
def two_apis(redis_server, sim_factory, tmp_path) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    """(with the fast path, without it): same settings, each on its own Redis prefix."""
    sim = sim_factory()
    servers, clients = [], []
    for fast in (True, False):
        port = free_port()
        settings = ApiSettings(redis_url=redis_server.url, redis_prefix="fd" + uuid.uuid4().hex[:8],
                               data_dir=tmp_path / str(fast), port=port, auth_mode="static", api_tokens=TOKENS,
                               comfyui_urls=[sim.url], health_interval_seconds=0.3, max_body_bytes=MAX_BODY,
                               max_jobs_in_flight_per_user=4, cors_origins=["https://app.example"])
        app = create_app(settings)
        if not fast:
            app.front_door = None
        servers.append(serve(app, port))
        clients.append(httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30))
    try:
        def ready() -> bool:
            return all(c.get("/api/comfyui/workers", headers=auth()).json()["ready"] == 1 for c in clients)

        wait_for(ready, timeout=20, what="a ready endpoint on both")
        yield clients[0], clients[1]
    finally:
        for client in clients:
            client.close()
        for server, thread in servers:
            server.should_exit = True
            thread.join(timeout=10)


def answer(r: httpx.Response) -> tuple[int, str, dict[str, str]]:
    assert r.headers["content-length"] == str(len(r.content))
    headers = {h: VOLATILE.sub("~", r.headers[h]) for h in COMPARED_HEADERS if h in r.headers}
    return r.status_code, VOLATILE.sub("~", r.text), headers


def post(client: httpx.Client, **kw: Any) -> httpx.Response:
    return client.post("/api/comfyui/generate", **kw)


JSON = {"content-type": "application/json"}
TEMPLATE = {"template": "weightless"}
REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("queued", {"json": TEMPLATE, "headers": auth()}),
    ("charset", {"content": b'{"template": "weightless"}', "headers": {**auth(), "content-type":
                                                                          "application/json; charset=utf-8"}}),
    ("idempotency key in the body", {"json": {**TEMPLATE, "idempotencyKey": "k1"}, "headers": auth()}),
    ("its repeat: 200, the first job", {"json": {**TEMPLATE, "idempotencyKey": "k1"}, "headers": auth()}),
    ("Idempotency-Key header", {"json": TEMPLATE, "headers": {**auth(), "Idempotency-Key": "k2"}}),
    ("its repeat", {"json": TEMPLATE, "headers": {**auth(), "Idempotency-Key": "k2"}}),
    ("Idempotency-Key too long", {"json": TEMPLATE, "headers": {**auth(), "Idempotency-Key": "k" * 129}}),
    ("Idempotency-Key too long, no token", {"json": TEMPLATE, "headers": {"Idempotency-Key": "k" * 129}}),
    ("no token", {"json": TEMPLATE}),
    ("not a bearer token", {"json": TEMPLATE, "headers": {"Authorization": "Basic YTpi"}}),
    ("unknown token", {"json": TEMPLATE, "headers": auth("nobody-0123456789abcdef0123")}),
    ("no token, bad field", {"json": {"template": "weightless", "priority": 11}}),
    ("no token, not JSON", {"content": b"{nope", "headers": JSON}),
    ("not JSON", {"content": b"{nope", "headers": {**auth(), **JSON}}),
    ("not UTF-8", {"content": b'{"template": "\xff"}', "headers": {**auth(), **JSON}}),
    ("empty body", {"content": b"", "headers": {**auth(), **JSON}}),
    ("a JSON list", {"json": [TEMPLATE], "headers": auth()}),
    ("a field out of range", {"json": {**TEMPLATE, "priority": 11}, "headers": auth()}),
    ("an unknown field", {"json": {**TEMPLATE, "colour": "red"}, "headers": auth()}),
    ("workflow and template", {"json": {**TEMPLATE, "workflow": {}}, "headers": auth()}),
    ("unknown template", {"json": {"template": "no-such-template"}, "headers": auth()}),
    ("a parameter the graph lacks", {"json": {**TEMPLATE, "params": {"steps": 0}}, "headers": auth()}),
    ("a node no pod has", {"json": {"workflow": {"1": {"class_type": "NoSuchNode", "inputs": {}}}},
                           "headers": auth()}),
    ("unknown pool", {"json": {**TEMPLATE, "pool": "nowhere"}, "headers": auth()}),
    # JSON that Python's json.loads reads and orjson refuses: the fast path hands it to the application
    ("NaN", {"content": b'{"template": "weightless", "params": {"width": NaN}}', "headers": {**auth(), **JSON}}),
    ("an integer beyond 64 bits", {"content": b'{"template": "weightless", "priority": 1180591620717411303424}',
                                   "headers": {**auth(), **JSON}}),
    ("UTF-16", {"content": '{"template": "no-such-template"}'.encode("utf-16"), "headers": {**auth(), **JSON}}),
    ("a lone surrogate", {"content": b'{"template": "\\ud800"}', "headers": {**auth(), **JSON}}),
    ("an integer of 65 bits in a graph", {"content": b'{"workflow": {"1": {"class_type": "EmptyImage", "inputs": '
                                                     b'{"width": 18446744073709551616}}}}',
                                          "headers": {**auth(), **JSON}}),
    ("text/plain", {"content": b'{"template": "weightless"}', "headers": {**auth(), "content-type": "text/plain"}}),
    ("no content type", {"content": b'{"template": "weightless"}', "headers": auth()}),
    ("over the limit by Content-Length", {"content": b" " * (MAX_BODY + 1), "headers": {**auth(), **JSON}}),
    ("over the limit, chunked", {"content": "chunks", "headers": {**auth(), **JSON}}),
    ("a browser with CORS on", {"json": TEMPLATE, "headers": {**auth(BOB), "Origin": "https://app.example"}}),
    ("past the in-flight limit (4)", {"json": TEMPLATE, "headers": auth()}),
]


def fresh(request: dict[str, Any]) -> dict[str, Any]:
    """The request with a new chunked body where it has one (an iterator is consumed by one request)."""
    if request.get("content") == "chunks":  # no Content-Length: sent chunked, over the limit only at the end
        return {**request, "content": iter([b" " * MAX_BODY, b"{}"])}
    return request


def test_the_fast_path_answers_as_the_route_does(two_apis):
    fast, full = two_apis
    for what, request in REQUESTS:
        mine, theirs = answer(post(fast, **fresh(request))), answer(post(full, **fresh(request)))
        assert mine == theirs, what
        assert mine[0] < 500, what  # every bad request is the client's: a 4xx naming what is wrong
    assert mine[0] == 429 and mine[2]["retry-after"], "the last request is over the in-flight limit"

    def generate_counts(client: httpx.Client) -> dict[str, str]:
        lines = client.get("/metrics").text.splitlines()
        return dict(line.rsplit(" ", 1) for line in lines
                    if line.startswith("comfyfleet_http_requests_total{") and "generate" in line)

    counts = generate_counts(fast)
    assert counts == generate_counts(full)
    assert counts['comfyfleet_http_requests_total{method="POST",route="/api/comfyui/generate",status="202"}'] == "5.0"


def test_a_redis_outage_is_a_503_on_both_paths(tmp_path):
    closed = free_port()  # nothing listens here
    answers = []
    for fast in (True, False):
        port = free_port()
        settings = ApiSettings(redis_url=f"redis://127.0.0.1:{closed}/0", data_dir=tmp_path / str(fast), port=port,
                               auth_mode="static", api_tokens=TOKENS, run_health_monitor=False)
        app = create_app(settings)
        if not fast:
            app.front_door = None
        server, thread = serve(app, port)
        try:
            r = httpx.post(f"http://127.0.0.1:{port}/api/comfyui/generate", json=TEMPLATE, headers=auth(), timeout=30)
            answers.append(answer(r))
        finally:
            server.should_exit = True
            thread.join(timeout=10)
    assert answers[0] == answers[1]
    assert answers[0][0] == 503 and answers[0][2]["retry-after"]


def test_requests_that_find_the_catalog_expired_read_it_once(redis_server, tmp_path):
    settings = ApiSettings(redis_url=redis_server.url, redis_prefix="fd" + uuid.uuid4().hex[:8],
                           data_dir=tmp_path, auth_mode="static", api_tokens=TOKENS, run_health_monitor=False)
    state = create_app(settings).state.cf
    registry = state.dispatcher.registry
    registry.upsert("url:http://a:8188", "http://a:8188")
    registry.record_probe_ok("url:http://a:8188", checkpoints=[], loras=[], queue_remaining=0, info={})
    catalog = {"SaveImage": {"input": {"required": {"images": ["IMAGE"]}}, "output_node": True}}
    registry.store_catalog("url:http://a:8188", catalog)
    conn = state.conn
    reads_before = catalog_reads(conn)

    async def many() -> list[Any]:
        try:
            return await asyncio.gather(*(catalog_for(state, None) for _ in range(32)))
        finally:
            await state.aconn.aclose()

    found = asyncio.run(many())
    assert all(c is found[0] for c in found) and found[0]["SaveImage"]["output_node"] is True
    assert catalog_reads(conn) - reads_before == 1, "32 requests, one read of the catalog"


def catalog_reads(conn: Any) -> int:
    """GET calls Redis has served so far (the catalog is the only value read with GET here)."""
    return int(conn.info("commandstats").get("cmdstat_get", {}).get("calls", 0))
