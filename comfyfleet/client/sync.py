"""The blocking client: `Client(api, token)`; every method maps to one REST call (see README "Python client")."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from comfyfleet.api.schemas import (
    JobPublic,
    JobsPublic,
    OutputPublic,
    QueueStatsPublic,
    VerifyLoraPublic,
    WorkersPublic,
)
from comfyfleet.client._common import (
    FINAL_STATES,
    JobEvent,
    JobTimeout,
    SameOriginBearer,
    SseParser,
    generate_body,
    job_events,
    raise_for_error,
)


class Client:
    """A comfyfleet API client over one connection pool; use it as a context manager or call close()."""

    def __init__(self, api: str = "http://127.0.0.1:8000", token: str | None = None, *, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None):
        self.api = api.rstrip("/")
        self._http = httpx.Client(base_url=self.api, auth=SameOriginBearer(self.api, token), timeout=timeout,
                                  transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        response = self._http.request(method, path, **kw)
        raise_for_error(response)
        return response.json()

    def generate(self, workflow: dict[str, Any] | None = None, *, wait: bool = False,
                 wait_timeout: float | None = None, **options: Any) -> JobPublic:
        """Queue a job (202) or, with wait, run it to its final state on the server (raises JobTimeout)."""
        return self.submit(generate_body(workflow, **options), wait=wait, wait_timeout=wait_timeout)

    def submit(self, body: dict[str, Any], *, wait: bool = False, wait_timeout: float | None = None) -> JobPublic:
        """Queue a job from a ready request body (camelCase, as the REST API takes it)."""
        if not wait:
            return JobPublic.model_validate(self._call("POST", "/api/comfyui/generate", json=body))
        params = {"timeout": wait_timeout} if wait_timeout else {}
        read = (wait_timeout or 3600) + 30
        response = self._http.post("/api/comfyui/generate/sync", json=body, params=params,
                                   timeout=httpx.Timeout(30, read=read))
        if response.status_code == 504:
            details = response.json().get("error", {}).get("details") or {}
            raise JobTimeout(str(details.get("jobId", "")), "the job is still running; poll it with job()")
        raise_for_error(response)
        return JobPublic.model_validate(response.json())

    def job(self, job_id: str) -> JobPublic:
        """The job's current state, progress, outputs and webhook deliveries."""
        return JobPublic.model_validate(self._call("GET", f"/api/comfyui/job/{quote(job_id, safe='')}"))

    status = job

    def events(self, job_id: str, timeout: float = 3600) -> Iterator[JobEvent]:
        """Server-sent events of a job, ending after its final state."""
        url = f"/api/comfyui/job/{quote(job_id, safe='')}/events"
        with self._http.stream("GET", url, timeout=httpx.Timeout(30, read=timeout)) as response:
            if not response.is_success:
                response.read()
                raise_for_error(response)
            for event in job_events(response.iter_lines(), SseParser()):
                yield event
                if event.job.state.value in FINAL_STATES:
                    return

    def wait(self, job_id: str, timeout: float = 3600) -> JobPublic:
        """Follow the job's events until it is final; JobTimeout if the stream ends first."""
        last: JobPublic | None = None
        for event in self.events(job_id, timeout):
            last = event.job
        if last is None or last.state.value not in FINAL_STATES:
            raise JobTimeout(job_id, "the event stream ended before the job was final")
        return last

    def cancel(self, job_id: str) -> JobPublic:
        return JobPublic.model_validate(self._call("DELETE", f"/api/comfyui/job/{quote(job_id, safe='')}"))

    def jobs(self, limit: int = 20, before: float | None = None, user: str | None = None) -> JobsPublic:
        params = {k: v for k, v in (("limit", limit), ("before", before), ("user", user)) if v is not None}
        return JobsPublic.model_validate(self._call("GET", "/api/comfyui/jobs", params=params))

    def workers(self) -> WorkersPublic:
        return WorkersPublic.model_validate(self._call("GET", "/api/comfyui/workers"))

    def queue_stats(self) -> QueueStatsPublic:
        return QueueStatsPublic.model_validate(self._call("GET", "/api/queue/stats"))

    def verify_lora(self, loras: list[str], pool: str | None = None) -> VerifyLoraPublic:
        body: dict[str, Any] = {"loras": loras, **({"pool": pool} if pool else {})}
        return VerifyLoraPublic.model_validate(self._call("POST", "/api/comfyui/verify-lora", json=body))

    def download(self, output: OutputPublic) -> bytes:
        """An output's bytes: inline data when present, else its URL (the token goes only to the API's origin)."""
        if output.data is not None:
            return base64.b64decode(output.data)
        if output.url is None:
            raise ValueError(f"output {output.filename} has no URL")
        response = self._http.get(output.url, follow_redirects=True, timeout=httpx.Timeout(30, read=300))
        raise_for_error(response)
        return response.content
