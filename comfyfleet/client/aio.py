"""The asyncio client: `AsyncClient(api, token)`; every method maps to one REST call (see README "Python client")."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
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
    raise_for_error,
    to_job_event,
)


class AsyncClient:
    """A comfyfleet API client over one connection pool; use it as a context manager or call close()."""

    def __init__(self, api: str = "http://127.0.0.1:8000", token: str | None = None, *, timeout: float = 30.0,
                 transport: httpx.AsyncBaseTransport | None = None):
        self.api = api.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.api, auth=SameOriginBearer(self.api, token), timeout=timeout,
                                  transport=transport)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, **kw: Any) -> Any:
        response = await self._http.request(method, path, **kw)
        raise_for_error(response)
        return response.json()

    async def generate(self, workflow: dict[str, Any] | None = None, *, wait: bool = False,
                 wait_timeout: float | None = None, **options: Any) -> JobPublic:
        """Queue a job (202) or, with wait, run it to its final state on the server (raises JobTimeout)."""
        return await self.submit(generate_body(workflow, **options), wait=wait, wait_timeout=wait_timeout)

    async def submit(self, body: dict[str, Any], *, wait: bool = False, wait_timeout: float | None = None) -> JobPublic:
        """Queue a job from a ready request body (camelCase, as the REST API takes it)."""
        if not wait:
            return JobPublic.model_validate(await self._call("POST", "/api/comfyui/generate", json=body))
        params = {"timeout": wait_timeout} if wait_timeout else {}
        read = (wait_timeout or 3600) + 30
        response = await self._http.post("/api/comfyui/generate/sync", json=body, params=params,
                                   timeout=httpx.Timeout(30, read=read))
        if response.status_code == 504:
            details = response.json().get("error", {}).get("details") or {}
            raise JobTimeout(str(details.get("jobId", "")), "the job is still running; poll it with job()")
        raise_for_error(response)
        return JobPublic.model_validate(response.json())

    async def job(self, job_id: str) -> JobPublic:
        """The job's current state, progress, outputs and webhook deliveries."""
        return JobPublic.model_validate(await self._call("GET", f"/api/comfyui/job/{quote(job_id, safe='')}"))

    status = job

    async def events(self, job_id: str, timeout: float = 3600) -> AsyncIterator[JobEvent]:
        """Server-sent events of a job, ending after its final state."""
        url = f"/api/comfyui/job/{quote(job_id, safe='')}/events"
        parser = SseParser()
        async with self._http.stream("GET", url, timeout=httpx.Timeout(30, read=timeout)) as response:
            if not response.is_success:
                await response.aread()
                raise_for_error(response)
            async for line in response.aiter_lines():
                done = parser.feed(line)
                event = to_job_event(*done) if done else None
                if event is None:
                    continue
                yield event
                if event.job.state.value in FINAL_STATES:
                    return

    async def wait(self, job_id: str, timeout: float = 3600) -> JobPublic:
        """Follow the job's events until it is final; JobTimeout if the stream ends first."""
        last: JobPublic | None = None
        async for event in self.events(job_id, timeout):
            last = event.job
        if last is None or last.state.value not in FINAL_STATES:
            raise JobTimeout(job_id, "the event stream ended before the job was final")
        return last

    async def cancel(self, job_id: str) -> JobPublic:
        return JobPublic.model_validate(await self._call("DELETE", f"/api/comfyui/job/{quote(job_id, safe='')}"))

    async def jobs(self, limit: int = 20, before: float | None = None, user: str | None = None) -> JobsPublic:
        params = {k: v for k, v in (("limit", limit), ("before", before), ("user", user)) if v is not None}
        return JobsPublic.model_validate(await self._call("GET", "/api/comfyui/jobs", params=params))

    async def workers(self) -> WorkersPublic:
        return WorkersPublic.model_validate(await self._call("GET", "/api/comfyui/workers"))

    async def queue_stats(self) -> QueueStatsPublic:
        return QueueStatsPublic.model_validate(await self._call("GET", "/api/queue/stats"))

    async def verify_lora(self, loras: list[str], pool: str | None = None) -> VerifyLoraPublic:
        body: dict[str, Any] = {"loras": loras, **({"pool": pool} if pool else {})}
        return VerifyLoraPublic.model_validate(await self._call("POST", "/api/comfyui/verify-lora", json=body))

    async def download(self, output: OutputPublic) -> bytes:
        """An output's bytes: inline data when present, else its URL (the token goes only to the API's origin)."""
        if output.data is not None:
            return base64.b64decode(output.data)
        if output.url is None:
            raise ValueError(f"output {output.filename} has no URL")
        response = await self._http.get(output.url, follow_redirects=True, timeout=httpx.Timeout(30, read=300))
        raise_for_error(response)
        return response.content
