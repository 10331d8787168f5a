"""One long-lived websocket per ComfyUI endpoint, shared by every prompt a process runs there.

ComfyUI sends a prompt's events to the socket whose clientId posted it, each tagged with the prompt_id. So a
dispatcher opens one socket per endpoint under its own clientId, posts every prompt with that client_id, and
routes each event to the run waiting for that prompt_id. A prompt subscribes before it is posted, so no event
is lost; when the socket drops, every subscriber hears it (and re-checks its prompt over HTTP, as run.py does
after any reconnect) and the next subscriber to need the socket reopens it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from comfyfleet.comfy.errors import ComfyProtocolError, ComfyUnavailable
from comfyfleet.comfy.messages import ComfyEvent, Status, parse_frame

log = logging.getLogger(__name__)

# Preview frames are small, but a custom node may stream big ones; refuse only the absurd.
MAX_FRAME_BYTES = 64 * 1024 * 1024
# Bound the closing handshake so a wedged server cannot hold a shutdown open.
CLOSE_TIMEOUT_S = 2.0


async def open_socket(url: str, timeout: float) -> tuple[ClientConnection, str | bytes]:
    """Connect a ComfyUI websocket and read its first frame (the hello, once the server registered our clientId).

    HTTP 502/503/504 and network errors are ComfyUnavailable, any other refusal a ComfyProtocolError.
    """
    try:
        # No permessage-deflate: ComfyUI's frames are small JSON (and binary previews that do not compress), and
        # inflating every frame was the dispatcher's largest cost per event on a LAN where bytes are cheap.
        ws = await connect(url, open_timeout=timeout, close_timeout=CLOSE_TIMEOUT_S, max_size=MAX_FRAME_BYTES,
                           compression=None)
    except InvalidStatus as exc:
        code = exc.response.status_code
        if code in (502, 503, 504):
            raise ComfyUnavailable(f"websocket {url}: HTTP {code}") from exc
        raise ComfyProtocolError(f"websocket {url} refused with HTTP {code}", status_code=code) from exc
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        raise ComfyUnavailable(f"websocket {url}: {exc!r}") from exc
    try:
        async with asyncio.timeout(timeout):
            first = await ws.recv()
    except (ConnectionClosed, TimeoutError) as exc:
        await ws.close()
        raise ComfyUnavailable(f"websocket {url} gave no hello frame: {exc!r}") from exc
    return ws, first


@dataclass(frozen=True)
class SocketClosed:
    """Delivered to every subscriber when the shared socket drops."""

    reason: str


class Subscription:
    """The events of one prompt (and socket-closed markers), in order."""

    def __init__(self, hub: WsHub, prompt_id: str):
        self.hub = hub
        self.prompt_id = prompt_id
        self.queue: asyncio.Queue[ComfyEvent | SocketClosed] = asyncio.Queue()

    async def get(self, timeout: float) -> ComfyEvent | SocketClosed:
        async with asyncio.timeout(timeout):
            return await self.queue.get()

    def rename(self, prompt_id: str) -> None:
        """The server queued our prompt under another id: follow that one."""
        self.hub.subscribers.pop(self.prompt_id, None)
        self.prompt_id = prompt_id
        self.hub.subscribers[prompt_id] = self

    def close(self) -> None:
        if self.hub.subscribers.get(self.prompt_id) is self:
            del self.hub.subscribers[self.prompt_id]


class WsHub:
    """The shared socket of one endpoint: connect on demand, one reader task, events routed by prompt_id."""

    def __init__(self, ws_url: str, client_id: str, open_timeout: float = 30.0):
        self.ws_url = ws_url
        self.client_id = client_id
        self.open_timeout = open_timeout
        self.subscribers: dict[str, Subscription] = {}
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._connecting = asyncio.Lock()

    @property
    def connected(self) -> bool:
        return self._ws is not None and self._reader is not None and not self._reader.done()

    def subscribe(self, prompt_id: str) -> Subscription:
        sub = Subscription(self, prompt_id)
        self.subscribers[prompt_id] = sub
        return sub

    async def ensure_connected(self) -> None:
        """Open the socket (and wait for its hello, so the server has registered our clientId) unless open."""
        if self.connected:
            return
        async with self._connecting:
            if self.connected:
                return
            ws = await self._open()
            self._ws = ws
            self._reader = asyncio.create_task(self._read(ws), name=f"ws-reader {self.ws_url}")

    async def _open(self) -> ClientConnection:
        ws, first = await open_socket(self.ws_url, self.open_timeout)
        hello = parse_frame(first)
        if isinstance(hello, Status) and hello.sid not in (None, self.client_id):
            log.warning("websocket %s answered with sid %r", self.ws_url, hello.sid)
        elif not isinstance(hello, Status):
            self._route(hello)
        return ws

    async def _read(self, ws: ClientConnection) -> None:
        reason = "closed"
        try:
            async for frame in ws:
                self._route(parse_frame(frame))
        except ConnectionClosed as exc:
            reason = str(exc)
        except Exception as exc:  # noqa: BLE001 - a bad frame must not leave subscribers waiting forever
            log.exception("websocket %s: reader failed", self.ws_url)
            reason = repr(exc)
        finally:
            if self._ws is ws:
                self._ws = None
            for sub in list(self.subscribers.values()):
                sub.queue.put_nowait(SocketClosed(reason))

    def _route(self, event: ComfyEvent) -> None:
        pid = event.event_prompt_id
        if pid is None:
            return
        sub = self.subscribers.get(pid)
        if sub is not None:
            sub.queue.put_nowait(event)

    async def close(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
