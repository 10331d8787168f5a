"""Submit-and-watch for one prompt over ComfyUI's websocket (README "A dispatcher's algorithm").

Order matters: the socket is open (and registered: its hello frame arrived) before POST /prompt,
the end is `executing` with `node: null` and our prompt_id, and the verdict comes from
/history/{id}. Silence and dropped sockets are resolved by polling /queue, then /history.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

from comfyfleet.comfy.errors import ComfyPromptLost, ComfyPromptWithdrawn, ComfyUnavailable
from comfyfleet.comfy.hub import ComfySocket, SocketClosed, SocketDropped, Subscription, WsHub, open_socket
from comfyfleet.comfy.messages import (
    ComfyEvent,
    Executed,
    Executing,
    ExecutionCached,
    ExecutionError,
    ExecutionInterrupted,
    ExecutionSuccess,
    FeatureFlags,
    Status,
    WatchdogCheck,
    parse_frame,
)
from comfyfleet.comfy.models import HistoryEntry, RunResult, RunStatus, SubmitResult, parse_outputs

if TYPE_CHECKING:
    from comfyfleet.comfy.client import ComfyClient, EventCallback

log = logging.getLogger(__name__)

# History is written before the final `executing null`, so one read normally suffices; the
# budget covers servers that lag (Salad polls 30 ms x 100 after execution_success).
HISTORY_AFTER_DONE_S = 5.0
# When a prompt is in neither /queue nor /history; the two are updated under one lock in ComfyUI,
# so this is only a safety margin before declaring the prompt lost.
HISTORY_GRACE_S = 1.0
# A prompt posted without client_id sends no events to anyone: poll at least this often.
POLL_ONLY_INTERVAL_S = 1.0
# Preview frames are small, but a custom node may stream big ones; refuse only the absurd.
MAX_FRAME_BYTES = 64 * 1024 * 1024
# Bound the closing handshake so a wedged server cannot hold a cancelled run open.
CLOSE_TIMEOUT_S = 2.0


class PromptRun:
    """The state of one run(): its socket, the events seen so far, and the watchdog clock."""

    def __init__(
        self, client: ComfyClient, prompt_id: str, on_event: EventCallback | None, silence_timeout: float,
        hub: WsHub | None = None, on_submitted: Callable[[], None] | None = None,
        withdrawn: asyncio.Event | None = None,
    ):
        self.client = client
        # Told once the prompt is on the server (posted, or found there on resume): its place in the queue is set.
        self.on_submitted = on_submitted
        # Looked at right before the POST: once set, the prompt is never posted (ComfyPromptWithdrawn instead).
        self.withdrawn = withdrawn
        # With a hub, events come from the endpoint's shared socket (our clientId); without, from our own.
        self.hub = hub
        self.sub: Subscription | None = None
        self.prompt_id = prompt_id
        self.on_event = on_event
        self.silence_timeout = silence_timeout
        self.ws: ComfySocket | None = None
        self.ws_client_id = client.client_id
        self.poll_only = False
        self.submitted: SubmitResult | None = None
        self.cached_nodes: list[str] = []
        self.executed: list[Executed] = []
        self.error: ExecutionError | None = None
        self.interrupted: ExecutionInterrupted | None = None
        self.succeeded = False
        self.last_heard = time.monotonic()
        self.last_check = self.last_heard
        self._backlog: deque[str | bytes] = deque()

    async def execute(self, prompt: dict[str, Any], *, resume: bool) -> RunResult:
        try:
            if resume:
                attached, result = await self._attach()
                if result is not None:
                    return result
                if attached:
                    self._submitted()
                    return await self._watch()
            await self._connect(self.client.client_id)
            if self.withdrawn is not None and self.withdrawn.is_set():
                raise ComfyPromptWithdrawn(self.prompt_id)
            self.submitted = await self.client.submit(prompt, self.prompt_id)
            self._submitted()
            self.prompt_id = self.submitted.prompt_id
            if self.sub is not None and self.sub.prompt_id != self.prompt_id:
                self.sub.rename(self.prompt_id)
            self.last_heard = self.last_check = time.monotonic()
            return await self._watch()
        finally:
            await self._close_ws()

    def _submitted(self) -> None:
        if self.on_submitted is not None:
            self.on_submitted()

    async def _attach(self) -> tuple[bool, RunResult | None]:
        """With resume: (attached, result) if the server has the prompt queued, running or succeeded, else
        (False, None).

        /queue is read before /history: ComfyUI moves a prompt from one to the other atomically, so
        this order cannot miss a prompt that finishes in between.
        """
        entry = (await self.client.queue()).find(self.prompt_id)
        if entry is None:
            hist = await self.client.history(self.prompt_id)
            if hist is None:
                return False, None
            result = self._result(hist)
            if result.status != "success":
                # An earlier attempt that ended in an error or an interrupt: that verdict is why we run again.
                # Forget it on the pod, so the new run's history is the only one /history/{id} can show.
                log.info("prompt %s ended %s before on %s: running it again", self.prompt_id, result.status,
                         self.client.base_url)
                await self.client.delete_history([self.prompt_id])
                return False, None
            return True, result
        log.info(
            "prompt %s already queued on %s (client %s): attaching",
            self.prompt_id,
            self.client.base_url,
            entry.client_id,
        )
        # Events go only to the socket named like the prompt's client_id, so take that name over
        # (whoever posted it is presumed gone). A prompt without client_id sends no events: poll.
        self.poll_only = entry.client_id is None
        await self._connect(entry.client_id or self.client.client_id)
        # It may have ended before our socket was registered.
        return True, await self._check_state()

    async def _watch(self) -> RunResult:
        while True:
            interval = (
                min(self.silence_timeout, POLL_ONLY_INTERVAL_S) if self.poll_only else self.silence_timeout
            )
            wait = max(max(self.last_heard, self.last_check) + interval - time.monotonic(), 0.0)
            try:
                event = await self._recv(wait)
            except TimeoutError:
                result = await self._check_state()
                if result is not None:
                    return result
                self.last_check = time.monotonic()
                continue
            except (SocketDropped, _Dropped) as exc:
                log.warning(
                    "websocket to %s closed during prompt %s: %s", self.client.base_url, self.prompt_id, exc
                )
                await self._reconnect()
                result = await self._check_state()
                if result is not None:
                    return result
                continue
            if await self._handle(event):
                return await self._finish()

    async def _recv(self, timeout: float) -> ComfyEvent:
        if self.sub is not None:
            item = await self.sub.get(timeout)
            if isinstance(item, SocketClosed):
                raise _Dropped(item.reason)
            return item
        if self._backlog:
            return parse_frame(self._backlog.popleft())
        assert self.ws is not None
        async with asyncio.timeout(timeout):
            return parse_frame(await self.ws.recv())

    async def _handle(self, event: ComfyEvent) -> bool:
        """Record and forward one event; True when it is our end-of-prompt marker."""
        if isinstance(event, Status | FeatureFlags):
            return False
        pid = event.event_prompt_id
        if pid is not None and pid != self.prompt_id:
            return False
        if pid == self.prompt_id:
            self.last_heard = time.monotonic()
            if isinstance(event, ExecutionCached):
                self.cached_nodes = list(event.nodes)
            elif isinstance(event, Executed):
                self.executed.append(event)
            elif isinstance(event, ExecutionError):
                self.error = event
            elif isinstance(event, ExecutionInterrupted):
                self.interrupted = event
            elif isinstance(event, ExecutionSuccess):
                self.succeeded = True
        await self._emit(event)
        return isinstance(event, Executing) and event.node is None and pid == self.prompt_id

    async def _emit(self, event: ComfyEvent) -> None:
        if self.on_event is None:
            return
        outcome = self.on_event(event)
        if inspect.isawaitable(outcome):
            await outcome

    async def _check_state(self) -> RunResult | None:
        """Watchdog poll: None while queued or running, the result once in history, else lost."""
        queue = await self.client.queue()
        if self.prompt_id in queue:
            state: Literal["pending", "running"] = "running" if self.prompt_id in queue.running else "pending"
            silent_for = time.monotonic() - self.last_heard
            log.info("prompt %s still %s after %.1fs of silence", self.prompt_id, state, silent_for)
            await self._emit(WatchdogCheck(prompt_id=self.prompt_id, state=state, silent_for=silent_for))
            return None
        hist = await self._history(HISTORY_GRACE_S)
        if hist is None:
            raise ComfyPromptLost(
                self.prompt_id,
                f"prompt {self.prompt_id} is neither queued nor in the history of {self.client.base_url}",
            )
        return self._result(hist)

    async def _finish(self) -> RunResult:
        hist = await self._history(HISTORY_AFTER_DONE_S)
        if hist is not None:
            return self._result(hist)
        log.warning(
            "no history for finished prompt %s; building the result from websocket events", self.prompt_id
        )
        return self._result_from_events()

    async def _history(self, budget: float) -> HistoryEntry | None:
        deadline = time.monotonic() + budget
        delay = 0.03
        while True:
            hist = await self.client.history(self.prompt_id)
            if hist is not None or time.monotonic() >= deadline:
                return hist
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    def _result(self, hist: HistoryEntry) -> RunResult:
        result = hist.to_run_result(self.submitted)
        if hist.error is None and self.error is not None:
            result = replace(result, error=self.error)
        if hist.interrupted is None and self.interrupted is not None and result.status == "error":
            result = replace(result, status="interrupted", error=None, interrupted=self.interrupted)
        if not hist.messages and self.cached_nodes:
            result = replace(result, cached_nodes=list(self.cached_nodes))
        return result

    def _result_from_events(self) -> RunResult:
        outputs = [ref for ev in self.executed for ref in parse_outputs({ev.node: ev.output})]
        status: RunStatus
        if self.interrupted is not None:
            status = "interrupted"
        elif self.error is not None or not self.succeeded:
            status = "error"
        else:
            status = "success"
        error = self.error
        if status == "error" and error is None:
            error = ExecutionError(
                None,
                None,
                "unknown",
                "prompt ended without success, error or history",
                prompt_id=self.prompt_id,
            )
        return RunResult(
            self.prompt_id, status, outputs, error, list(self.cached_nodes), self.interrupted, self.submitted
        )

    async def _connect(self, client_id: str) -> None:
        """Open the socket as client_id and wait for its hello, so the server has registered it."""
        if self.hub is not None and client_id == self.hub.client_id:
            if self.sub is None:
                self.sub = self.hub.subscribe(self.prompt_id)
            await self.hub.ensure_connected()
            self.ws_client_id = client_id
            return
        url = self.client.ws_url(client_id)
        ws, first = await open_socket(url, self.client.timeout)
        self.ws, self.ws_client_id = ws, client_id
        hello = parse_frame(first)
        if not isinstance(hello, Status):
            self._backlog.append(first)
        elif hello.sid not in (None, client_id):
            log.warning("websocket %s answered with sid %r", url, hello.sid)

    async def _reconnect(self) -> None:
        if self.sub is None:
            await self._close_ws()
        last: ComfyUnavailable | None = None
        for attempt in range(self.client.reconnect_attempts):
            await asyncio.sleep(self.client.reconnect_backoff * 2**attempt)
            try:
                await self._connect(self.ws_client_id)
                log.info("websocket to %s reconnected (attempt %d)", self.client.base_url, attempt + 1)
                return
            except ComfyUnavailable as exc:
                last = exc
        raise ComfyUnavailable(
            f"websocket to {self.client.base_url} lost during prompt {self.prompt_id}; "
            f"{self.client.reconnect_attempts} reconnects failed: {last}"
        ) from last

    async def _close_ws(self) -> None:
        if self.sub is not None:
            self.sub.close()
            self.sub = None
        ws, self.ws = self.ws, None
        self._backlog.clear()
        if ws is not None:
            await ws.close()


class _Dropped(Exception):
    """The endpoint's shared socket dropped while this prompt waited on it."""
