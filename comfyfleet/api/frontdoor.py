"""POST /api/comfyui/generate without FastAPI's routing, dependency solving and middleware stack (issue 14).

The busiest route of the API is answered here, in front of the FastAPI application: the request is read,
checked and answered the way the route in routes/generate.py answers it, through the same functions
(`principal_of`, `queue_generation`, the error handlers' own responses) and with the same metrics. The route
stays: it documents the request in the OpenAPI schema and answers every request this path does not take
itself. Anything other than the plain case (a body over the limit by its Content-Length, a content type other
than JSON, a body that does not decode or validate, an Idempotency-Key header out of its bounds, a browser's
Origin with CORS on, tracing on, a root path) goes to the full application with the body already read, so its
refusals are FastAPI's own, unchanged.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import redis
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import HTTPConnection

from comfyfleet.api.deps import principal_of
from comfyfleet.api.errors import http_error_response, redis_error_response, unexpected_response
from comfyfleet.api.metrics import BodyTooLarge
from comfyfleet.api.routes.generate import GENERATE_PATH, IDEMPOTENCY_KEY_MAX, job_location, queue_generation
from comfyfleet.api.schemas import JobCreate, public_json
from comfyfleet.observability import tracing

if TYPE_CHECKING:
    from prometheus_client.metrics import Counter, Histogram
    from starlette.responses import Response
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from comfyfleet.api.metrics import Metrics
    from comfyfleet.api.state import AppState

# The content types this path reads as JSON (FastAPI reads any application/json or application/*+json; the
# rest it answers itself).
JSON_TYPES = frozenset({b"application/json", b"application/json; charset=utf-8", b"application/json;charset=utf-8"})


class FrontDoor:
    """Serves POST GENERATE_PATH itself and hands what it does not serve to `app` (the FastAPI application)."""

    def __init__(self, app: ASGIApp, state: AppState, metrics: Metrics):
        self.app = app
        self.state = state
        self.max_bytes = state.settings.max_body_bytes
        self.cors = bool(state.settings.cors_origins)  # CORSMiddleware answers requests that carry an Origin
        self.retry_after = state.settings.unavailable_retry_after_seconds
        self.metrics = metrics
        self._counters: dict[int, Counter] = {}
        self._latency: Histogram = metrics.latency.labels("POST", GENERATE_PATH)

    def serves(self, scope: Scope) -> bool:
        """Whether this path takes the request (the rest goes straight to the application)."""
        return (scope["type"] == "http" and scope["path"] == GENERATE_PATH and scope["method"] == "POST"
                and not scope.get("root_path") and not tracing.enabled())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        content_type = idempotency_key = None
        for name, value in scope["headers"]:
            if name == b"content-type" and content_type is None:
                content_type = value
            elif name == b"idempotency-key" and idempotency_key is None:
                idempotency_key = value
            elif name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self.app(scope, receive, send)  # BodyLimitMiddleware's 413, before the body is read
                return
            elif name == b"origin" and self.cors:
                await self.app(scope, receive, send)  # CORS headers on the answer
                return
        if content_type is None or content_type.lower() not in JSON_TYPES:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away before it sent its body
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:  # a chunked body over the limit: the route's 413
                await self._answer(http_error_response(BodyTooLarge(self.max_bytes)), scope, receive, send, started)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        key = idempotency_key.decode("latin-1") if idempotency_key is not None else None
        try:
            # json.loads, as FastAPI's request.json(): orjson would read an integer beyond 64 bits as a float (a
            # different value, accepted where the route refuses it)
            data = json.loads(body)
            if key is not None and not 1 <= len(key) <= IDEMPOTENCY_KEY_MAX:
                raise ValueError("Idempotency-Key out of bounds")
        except (ValueError, RecursionError):  # FastAPI's 422 (or its 400 for bad UTF-8) names the problem
            await self.app(scope, _replay(body, receive), send)
            return
        await self._generate(scope, receive, send, started, body, data, key)

    async def _generate(self, scope: Scope, receive: Receive, send: Send, started: float, body: bytes, data: Any,
                        key: str | None) -> None:
        state = self.state
        try:
            # FastAPI's order: the body is decoded first, then the caller is authenticated, then fields validated.
            principal = await principal_of(HTTPConnection(scope), state)
            try:
                request = JobCreate.model_validate(data)
            except ValidationError:  # FastAPI's 422 names every field
                await self.app(scope, _replay(body, receive), send)
                return
            job, created = await queue_generation(state, request, principal, key)
            content = public_json(job, state.tokens)  # the route's JobPublic, as its response_model writes it
        except StarletteHTTPException as exc:
            await self._answer(http_error_response(exc), scope, receive, send, started)
            return
        except redis.RedisError as exc:
            response = redis_error_response(exc, "POST", GENERATE_PATH, self.retry_after)
            await self._answer(response, scope, receive, send, started)
            return
        except Exception as exc:
            await self._answer(unexpected_response(exc, "POST", GENERATE_PATH), scope, receive, send, started)
            raise  # as Starlette's ServerErrorMiddleware does: the server logs it too
        status = 202 if created else 200
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-length", str(len(content)).encode()),
                                (b"content-type", b"application/json"),
                                (b"location", job_location(job.id).encode("latin-1"))]})
        await send({"type": "http.response.body", "body": content})
        self._observe(status, started)

    async def _answer(self, response: Response, scope: Scope, receive: Receive, send: Send, started: float) -> None:
        await response(scope, receive, send)
        self._observe(response.status_code, started)

    def _observe(self, status: int, started: float) -> None:
        """MetricsMiddleware's figures, with the label values of this route bound once."""
        counter = self._counters.get(status)
        if counter is None:
            counter = self._counters[status] = self.metrics.requests.labels("POST", GENERATE_PATH, str(status))
        counter.inc()
        self._latency.observe(time.perf_counter() - started)


def _replay(body: bytes, receive: Receive) -> Receive:
    """`receive` for a request whose body was read already: the body first, then what the server sends."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
