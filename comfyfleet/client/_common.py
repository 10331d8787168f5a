"""What the sync and async clients share: request bodies, errors, SSE parsing, the same-origin bearer token."""

from __future__ import annotations

import json
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from typing import Any

import httpx

from comfyfleet.api.schemas import JobPublic

FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})


class ComfyfleetError(Exception):
    """The API answered with an error: `status`, `code`, `message` and `details` from its error body."""

    def __init__(self, status: int, code: str, message: str, details: Any = None):
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details


class JobTimeout(ComfyfleetError):
    """A wait ended before the job reached a final state; `job_id` says which job to poll."""

    def __init__(self, job_id: str, message: str):
        super().__init__(504, "timeout", message, {"jobId": job_id})
        self.job_id = job_id


@dataclass(frozen=True)
class JobEvent:
    """One server-sent event of a job: its kind (`state`, `progress`, ...) and the job after the change."""

    event: str
    job: JobPublic
    id: str | None = None


class SameOriginBearer(httpx.Auth):
    """Sends the bearer token only to the API's own origin (scheme, host, port): an absolute output URL on
    another host (a presigned S3 link, a CDN) never sees it. httpx drops it on cross-origin redirects too."""

    def __init__(self, api: str, token: str | None):
        self.origin = _origin(httpx.URL(api))
        self.token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self.token and _origin(request.url) == self.origin:
            request.headers["Authorization"] = f"Bearer {self.token}"
        yield request


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    default = {"http": 80, "https": 443}.get(url.scheme)
    return url.scheme, url.host.lower(), url.port or default


def generate_body(workflow: dict[str, Any] | None = None, *, template: str | None = None,
                  params: dict[str, Any] | None = None, priority: int | None = None, pool: str | None = None,
                  input_images: dict[str, str] | None = None, webhook: str | dict[str, Any] | None = None,
                  output: dict[str, Any] | None = None, timeout_seconds: int | None = None,
                  idempotency_key: str | None = None) -> dict[str, Any]:
    """The JSON body of POST /api/comfyui/generate (camelCase); `webhook` may be just a URL."""
    if (workflow is None) == (template is None):
        raise ValueError("give exactly one of workflow or template")
    body: dict[str, Any] = {"workflow": workflow} if workflow is not None else {"template": template}
    optional = {"params": params, "priority": priority, "pool": pool, "inputImages": input_images,
                "output": output, "timeoutSeconds": timeout_seconds, "idempotencyKey": idempotency_key,
                "webhook": {"url": webhook} if isinstance(webhook, str) else webhook}
    body.update({k: v for k, v in optional.items() if v is not None})
    return body


def raise_for_error(response: httpx.Response) -> None:
    """Raise ComfyfleetError for a non-2xx answer (the body must have been read)."""
    if response.is_success:
        return
    try:
        err = response.json()["error"]
        raise ComfyfleetError(response.status_code, str(err["code"]), str(err["message"]), err.get("details"))
    except (ValueError, KeyError, TypeError):
        raise ComfyfleetError(response.status_code, "http_error", response.text[:500]) from None


class SseParser:
    """Server-sent events from lines: feed lines, get finished (event, data, id) triples (pure)."""

    def __init__(self) -> None:
        self.event = "message"
        self.data: list[str] = []
        self.id: str | None = None

    def feed(self, line: str) -> tuple[str, str, str | None] | None:
        if not line:
            if not self.data:
                self.event = "message"
                return None
            done = (self.event, "\n".join(self.data), self.id)
            self.event, self.data = "message", []
            return done
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self.event = value
        elif name == "data":
            self.data.append(value)
        elif name == "id":
            self.id = value
        return None


def job_events(lines: Iterable[str], parser: SseParser) -> Generator[JobEvent, None, None]:
    """JobEvents from SSE lines; events whose data is not a job are skipped."""
    for line in lines:
        done = parser.feed(line)
        if done is None:
            continue
        event = to_job_event(*done)
        if event is not None:
            yield event


def to_job_event(event: str, data: str, event_id: str | None) -> JobEvent | None:
    try:
        payload = json.loads(data)
    except json.JSONDecodeError:
        return None
    if not isinstance(payload, dict) or "jobId" not in payload:
        return None
    return JobEvent(event=event, job=JobPublic.model_validate(payload), id=event_id)
