"""One error body everywhere: {"error": {"code", "message", "details"}}."""

from __future__ import annotations

import logging
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
          409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type", 422: "validation_error",
          429: "too_many_requests", 500: "internal_error", 503: "unavailable", 504: "timeout"}


# FastAPI's detail when a body cannot be decoded at all; it is bad input like any other, so 422 naming `body`.
BODY_PARSE_ERROR = "There was an error parsing the body"


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}


class ApiError(StarletteHTTPException):
    """An HTTP error with our code and details; raised only by routes and deps."""

    def __init__(self, status_code: int, message: str, *, code: str | None = None, details: Any = None,
                 headers: dict[str, str] | None = None):
        super().__init__(status_code=status_code, detail=message, headers=headers)
        self.code = code or _CODES.get(status_code, "error")
        self.details = details


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorBody(BaseModel):
    """The one error shape of every 4xx and 5xx answer."""

    error: ErrorDetail


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for the error codes a route or router may answer."""
    text = {400: "Bad request", 401: "Missing or invalid bearer token", 403: "Not allowed for this user",
            404: "Not found (or not yours)", 409: "Conflict with the current state", 413: "Request body too large",
            422: "Invalid input; details name the field", 429: "A fair-use limit was reached; see Retry-After",
            503: "A backing service (Redis, identity) is unavailable; see Retry-After",
            504: "Still running after the wait"}
    return {c: {"model": ErrorBody, "description": text.get(c, "Error")} for c in codes}


# Redis failures a client should retry later, not bugs: unreachable, loading, or out of memory/read-only.
_UNAVAILABLE_MARKERS = ("OOM", "LOADING", "READONLY", "MASTERDOWN", "MISCONF", "BUSY")


def redis_unavailable(exc: redis.RedisError) -> bool:
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError | redis.BusyLoadingError
                  | redis.exceptions.OutOfMemoryError | redis.exceptions.ReadOnlyError):
        return True
    text = str(exc)
    # A failed command inside a pipeline comes back as "Command # N (...) of pipeline caused error: <reply>".
    return isinstance(exc, redis.ResponseError) and (text.startswith(_UNAVAILABLE_MARKERS) or "maxmemory" in text)


def _field_path(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def http_error_response(exc: StarletteHTTPException) -> JSONResponse:
    """The answer to an HTTPException (ours carry a code and details)."""
    if exc.status_code == 400 and exc.detail == BODY_PARSE_ERROR:  # bytes that are not JSON text (bad UTF-8)
        return JSONResponse(error_body("validation_error", "invalid request: body: not valid JSON text",
                                       [{"field": "body", "message": "not valid JSON text"}]), status_code=422)
    code = getattr(exc, "code", None) or _CODES.get(exc.status_code, "error")
    body = error_body(code, str(exc.detail), getattr(exc, "details", None))
    return JSONResponse(jsonable_encoder(body), status_code=exc.status_code, headers=exc.headers)


def redis_error_response(exc: redis.RedisError, method: str, path: str, retry_after_seconds: int) -> JSONResponse:
    """503 with Retry-After when Redis cannot answer now; 500 (logged with its traceback) for any other error."""
    if not redis_unavailable(exc):
        log.error("Redis error on %s %s", method, path, exc_info=exc)
        return JSONResponse(error_body("internal_error", "internal server error"), status_code=500)
    log.warning("Redis unavailable on %s %s: %s", method, path, exc)
    return JSONResponse(error_body("unavailable", "the job store (Redis) is unavailable; retry later",
                                   {"retryAfter": retry_after_seconds}),
                        status_code=503, headers={"Retry-After": str(retry_after_seconds)})


def unexpected_response(exc: Exception, method: str, path: str) -> JSONResponse:
    """500 for a bug, logged with its traceback."""
    log.error("unhandled error on %s %s", method, path, exc_info=exc)
    return JSONResponse(error_body("internal_error", "internal server error"), status_code=500)


def install_error_handlers(app: FastAPI, retry_after_seconds: int = 5) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return http_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = [{"field": _field_path(tuple(e.get("loc", ()))), "message": e.get("msg", ""), "type": e.get("type")}
                  for e in exc.errors()]
        summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields[:5])
        return JSONResponse(jsonable_encoder(error_body("validation_error", f"invalid request: {summary}", fields)),
                            status_code=422)

    @app.exception_handler(redis.RedisError)
    async def redis_error(request: Request, exc: redis.RedisError) -> JSONResponse:
        return redis_error_response(exc, request.method, request.url.path, retry_after_seconds)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        return unexpected_response(exc, request.method, request.url.path)
