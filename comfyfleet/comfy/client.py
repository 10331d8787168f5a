"""Async client for one ComfyUI server: HTTP endpoints here, the websocket run loop in run.py.

HTTP goes through aiohttp (one pooled session per client, kept alive): the dispatcher makes five requests per
job to its pod, and aiohttp's C parser costs a fraction of httpx's pure-Python stack per request
(BENCHMARKS.md, profile of the dispatch path).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import mimetypes
import ssl
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import certifi

from comfyfleet.comfy.errors import ComfyProtocolError, ComfyUnavailable
from comfyfleet.comfy.hub import WsHub
from comfyfleet.comfy.messages import ComfyEvent
from comfyfleet.comfy.models import (
    HistoryEntry,
    OutputRef,
    PodModels,
    QueueState,
    RunResult,
    SubmitResult,
    UploadedImage,
    node_input_options,
    parse_history,
    parse_queue,
    parse_submit,
    validation_error_from,
)

log = logging.getLogger(__name__)

EventCallback = Callable[[ComfyEvent], Awaitable[None] | None]

# A load balancer or kube Service in front of the pod answers these while the pod is gone.
_GATEWAY_STATUSES = {502, 503, 504}


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One verifying TLS context per process (certifi's CAs): building one costs 20-50 ms, and a client is made
    for every health probe."""
    return ssl.create_default_context(cafile=certifi.where())


def warm_up() -> None:
    """Do once what every client would otherwise pay on first use in a fresh process: the TLS context, the
    mime types table and the lazily imported run loop."""
    import comfyfleet.comfy.run  # noqa: F401 - imported lazily by ComfyClient.run()

    tls_context()
    mimetypes.init()


@dataclass(frozen=True)
class HttpAnswer:
    """One HTTP answer, read whole (ComfyUI's answers are small JSON documents or one image)."""

    method: str
    path: str
    status_code: int
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


class ComfyClient:
    """One ComfyUI server. Each instance has its own client_id, so runs must not overlap on it.

    Args:
        base_url: e.g. "http://10.0.0.7:8188" (a path prefix such as "/api" is kept).
        client_id: websocket clientId and POST /prompt client_id; a fresh uuid hex by default.
        timeout: seconds for each HTTP request and for opening the websocket.
        reconnect_attempts: websocket reconnects tried (with doubling backoff) before ComfyUnavailable.
        reconnect_backoff: first reconnect delay in seconds.
    """

    def __init__(
        self,
        base_url: str,
        *,
        client_id: str | None = None,
        timeout: float = 30.0,
        reconnect_attempts: int = 3,
        reconnect_backoff: float = 0.25,
    ):
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id or uuid.uuid4().hex
        self.timeout = timeout
        self.reconnect_attempts = reconnect_attempts
        self.reconnect_backoff = reconnect_backoff
        self._http: aiohttp.ClientSession | None = None  # made on first use, inside the running loop
        self._run_lock = asyncio.Lock()

    async def __aenter__(self) -> ComfyClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            # No Origin header is ever sent: ComfyUI's origin middleware answers 403 to a foreign one.
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=tls_context(), limit=0, ttl_dns_cache=60),
                timeout=aiohttp.ClientTimeout(total=self.timeout), trust_env=False)
        return self._http

    def ws_url(self, client_id: str | None = None) -> str:
        """ws(s)://host[:port][/prefix]/ws?clientId=<client_id>."""
        parts = urlsplit(self.base_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        path = parts.path.rstrip("/") + "/ws"
        return urlunsplit((scheme, parts.netloc, path, f"clientId={client_id or self.client_id}", ""))

    # -- HTTP plumbing ---------------------------------------------------------------------------

    async def _request(self, method: str, path: str, **kwargs: Any) -> HttpAnswer:
        try:
            async with self._session().request(method, self.base_url + path, allow_redirects=False,
                                               **kwargs) as resp:
                answer = HttpAnswer(method, path, resp.status, await resp.read())
        except (aiohttp.ClientError, TimeoutError) as exc:  # refused, reset, DNS, timeouts, dropped connection
            raise ComfyUnavailable(f"{method} {self.base_url}{path}: {exc!r}") from exc
        if answer.status_code in _GATEWAY_STATUSES:
            raise ComfyUnavailable(f"{method} {self.base_url}{path}: HTTP {answer.status_code}")
        return answer

    @staticmethod
    def _unexpected(resp: HttpAnswer) -> ComfyProtocolError:
        hint = " (Origin check?)" if resp.status_code == 403 else ""
        return ComfyProtocolError(
            f"{resp.method} {resp.path.split('?')[0]} answered HTTP {resp.status_code}{hint}: {resp.text[:200]!r}",
            status_code=resp.status_code,
            body=resp.text,
        )

    @staticmethod
    def _json(resp: HttpAnswer) -> Any:
        try:
            return resp.json()
        except ValueError as exc:
            raise ComfyProtocolError(
                f"{resp.path.split('?')[0]} answered non-JSON: {resp.text[:200]!r}",
                status_code=resp.status_code,
                body=resp.text,
            ) from exc

    async def _get_json(self, path: str, **kwargs: Any) -> Any:
        resp = await self._request("GET", path, **kwargs)
        if resp.status_code != 200:
            raise self._unexpected(resp)
        return self._json(resp)

    async def _post_ok(self, path: str, body: dict[str, Any]) -> None:
        """POST for the endpoints that answer 200 with an empty body."""
        resp = await self._request("POST", path, json=body)
        if resp.status_code != 200:
            raise self._unexpected(resp)

    # -- endpoints -------------------------------------------------------------------------------

    async def system_stats(self) -> dict[str, Any]:
        """GET /system_stats: versions, RAM and devices; the readiness probe."""
        stats: dict[str, Any] = await self._get_json("/system_stats")
        return stats

    async def object_info(self, node_class: str | None = None) -> dict[str, Any]:
        """GET /object_info[/<class>]; an unknown class gives {}."""
        info: dict[str, Any] = await self._get_json(f"/object_info/{node_class}" if node_class else "/object_info")
        return info

    async def available_models(self) -> PodModels:
        """Checkpoint and LoRA names from the loader nodes' COMBO inputs."""
        ckpt, lora = await asyncio.gather(
            self.object_info("CheckpointLoaderSimple"), self.object_info("LoraLoader")
        )
        return PodModels(
            checkpoints=node_input_options(ckpt, "CheckpointLoaderSimple", "ckpt_name"),
            loras=node_input_options(lora, "LoraLoader", "lora_name"),
        )

    async def queue(self) -> QueueState:
        """GET /queue: running and pending prompt ids."""
        return parse_queue(await self._get_json("/queue"))

    async def history(self, prompt_id: str) -> HistoryEntry | None:
        """GET /history/{id}; None when the server answers {} (unknown, deleted or not finished)."""
        return parse_history(prompt_id, await self._get_json(f"/history/{prompt_id}"))

    async def submit(self, prompt: dict[str, Any], prompt_id: str) -> SubmitResult:
        """POST /prompt with our client_id and prompt_id; raises ComfyValidationError on 400."""
        body = {"prompt": prompt, "client_id": self.client_id, "prompt_id": prompt_id}
        resp = await self._request("POST", "/prompt", json=body)
        if resp.status_code == 400:
            try:
                payload = resp.json()
            except ValueError:
                raise self._unexpected(resp) from None
            raise validation_error_from(payload)
        if resp.status_code != 200:
            raise self._unexpected(resp)
        result = parse_submit(self._json(resp))
        if result.prompt_id != prompt_id:
            log.warning("server queued our prompt %s under id %s", prompt_id, result.prompt_id)
        if result.node_errors:
            log.info(
                "prompt %s queued with node errors on %s", prompt_id, [e.node_id for e in result.node_errors]
            )
        return result

    async def upload_image(
        self, data: bytes, filename: str, *, subfolder: str = "", overwrite: bool = False
    ) -> UploadedImage:
        """POST /upload/image into the input folder; the answer may rename the file."""
        form = aiohttp.FormData()
        for name, value in (("type", "input"), ("subfolder", subfolder), ("overwrite", str(overwrite).lower())):
            form.add_field(name, value)
        form.add_field("image", data, filename=filename,
                       content_type=mimetypes.guess_type(filename)[0] or "application/octet-stream")
        resp = await self._request("POST", "/upload/image", data=form)
        if resp.status_code != 200:
            raise self._unexpected(resp)
        body = self._json(resp)
        if not isinstance(body, dict) or "name" not in body:
            raise ComfyProtocolError(f"/upload/image answered {body!r:.200}")
        return UploadedImage(
            name=str(body["name"]),
            subfolder=str(body.get("subfolder") or ""),
            type=str(body.get("type") or "input"),
        )

    async def view(self, ref: OutputRef) -> bytes:
        """GET /view: the bytes of one output file."""
        params = {"filename": ref.filename, "subfolder": ref.subfolder, "type": ref.type}
        resp = await self._request("GET", "/view", params=params)
        if resp.status_code != 200:
            raise self._unexpected(resp)
        return resp.content

    async def interrupt(self, prompt_id: str | None = None) -> None:
        """POST /interrupt: targeted (a no-op unless that prompt runs now) or, without an id, global."""
        await self._post_ok("/interrupt", {"prompt_id": prompt_id} if prompt_id else {})

    async def delete_queued(self, prompt_ids: list[str]) -> None:
        """POST /queue {"delete": [...]}: removes pending prompts only."""
        await self._post_ok("/queue", {"delete": list(prompt_ids)})

    async def cancel(self, prompt_id: str) -> None:
        """Stop a prompt wherever it is: delete it if pending, then interrupt it if running.

        Delete first: a pending prompt that starts in between is then caught by the interrupt.
        """
        await self.delete_queued([prompt_id])
        await self.interrupt(prompt_id)

    async def free(self, unload_models: bool = False, free_memory: bool = True) -> None:
        """POST /free: drop models and/or cached memory (after an OOM)."""
        await self._post_ok("/free", {"unload_models": unload_models, "free_memory": free_memory})

    async def cleanup_files(self, input_folder: str | None, outputs: list[OutputRef]) -> bool:
        """POST /comfyfleet/cleanup: delete a job's upload folder and output files on the pod.

        Not a ComfyUI core route: the worker image's `comfyfleet_cleanup` custom node serves it. Returns False
        when the server does not have it (another image: ComfyUI's static frontend route answers an unknown POST
        with 405, a proxy in front may say 404), True when the files were removed.
        """
        body: dict[str, Any] = {"outputs": [{"filename": o.filename, "subfolder": o.subfolder, "type": o.type}
                                            for o in outputs]}
        if input_folder:
            body["inputs"] = input_folder
        resp = await self._request("POST", "/comfyfleet/cleanup", json=body)
        if resp.status_code in (404, 405):
            return False
        if resp.status_code != 200:
            raise self._unexpected(resp)
        return True

    async def delete_history(self, prompt_ids: list[str]) -> None:
        """POST /history {"delete": [...]}."""
        await self._post_ok("/history", {"delete": list(prompt_ids)})

    async def run(
        self,
        prompt: dict[str, Any],
        prompt_id: str,
        on_event: EventCallback | None = None,
        *,
        silence_timeout: float = 10.0,
        resume: bool = False,
        hub: WsHub | None = None,
        on_submitted: Callable[[], None] | None = None,
        withdrawn: asyncio.Event | None = None,
    ) -> RunResult:
        """Submit prompt (or, with resume, attach to it if the server has it) and wait for its end.

        Raises ComfyValidationError (400), ComfyUnavailable (server gone), ComfyPromptLost (server
        up, prompt gone), ComfyProtocolError, ComfyPromptWithdrawn (`withdrawn` was set before the POST went
        out: the server never had the prompt). Without a hub, one run at a time per client (one clientId, one
        socket); with the endpoint's shared hub (same clientId as this client), any number at once.
        """
        from comfyfleet.comfy.run import PromptRun

        if hub is not None:
            if hub.client_id != self.client_id:
                raise ValueError("the hub's clientId must be this client's")
            return await PromptRun(self, prompt_id, on_event, silence_timeout, hub, on_submitted,
                                   withdrawn).execute(prompt, resume=resume)
        if self._run_lock.locked():
            raise RuntimeError("a run is already in progress on this ComfyClient; use one client per run")
        async with self._run_lock:
            return await PromptRun(self, prompt_id, on_event, silence_timeout, None, on_submitted,
                                   withdrawn).execute(prompt, resume=resume)
