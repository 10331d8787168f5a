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

import aiohttp

from comfyfleet.comfy.errors import ComfyProtocolError, ComfyUnavailable
from comfyfleet.comfy.messages import ComfyEvent, Status, parse_frame

log = logging.getLogger(__name__)

# Preview frames are small, but a custom node may stream big ones; refuse only the absurd.
MAX_FRAME_BYTES = 64 * 1024 * 1024
# Bound the closing handshake so a wedged server cannot hold a shutdown open.
CLOSE_TIMEOUT_S = 2.0


class SocketDropped(Exception):
    """The websocket closed (by the server, the network or us); the message says how."""


class ComfySocket:
    """One open ComfyUI websocket. aiohttp's frame reader is compiled: a dispatcher reads every event of every
    prompt it runs, and a pure-Python reader was its largest cost per event."""

    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse):
        self._session = session
        self._ws = ws

    async def recv(self) -> str | bytes:
        """The next text or binary frame; SocketDropped once the socket is closed."""
        msg = await self._ws.receive()
        if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            data: str | bytes = msg.data
            return data
        if msg.type is aiohttp.WSMsgType.ERROR:
            raise SocketDropped(f"websocket error: {msg.data!r}")
        raise SocketDropped(f"closed (code {self._ws.close_code}{f', {msg.extra}' if msg.extra else ''})")

    async def close(self) -> None:
        try:
            await self._ws.close()
        finally:
            await self._session.close()


async def open_socket(url: str, timeout: float) -> tuple[ComfySocket, str | bytes]:
    """Connect a ComfyUI websocket and read its first frame (the hello, once the server registered our clientId).

    HTTP 502/503/504 and network errors are ComfyUnavailable, any other refusal a ComfyProtocolError.
    """
    from comfyfleet.comfy.client import tls_context  # the client module imports this one

    # No permessage-deflate: ComfyUI's frames are small JSON (and binary previews that do not compress), and
    # inflating every frame costs CPU on a LAN where bytes are cheap.
    session = aiohttp.ClientSession(trust_env=False)
    try:
        ws = await session.ws_connect(
            url, timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_TIMEOUT_S), compress=0,
            max_msg_size=MAX_FRAME_BYTES, ssl=tls_context(), autoping=True, autoclose=True)
    except aiohttp.WSServerHandshakeError as exc:
        await session.close()
        code = exc.status
        if code in (502, 503, 504):
            raise ComfyUnavailable(f"websocket {url}: HTTP {code}") from exc
        raise ComfyProtocolError(f"websocket {url} refused with HTTP {code}", status_code=code) from exc
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        await session.close()
        raise ComfyUnavailable(f"websocket {url}: {exc!r}") from exc
    socket = ComfySocket(session, ws)
    try:
        async with asyncio.timeout(timeout):
            first = await socket.recv()
    except (SocketDropped, TimeoutError) as exc:
        await socket.close()
        raise ComfyUnavailable(f"websocket {url} gave no hello frame: {exc!r}") from exc
    return socket, first


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
        self._ws: ComfySocket | None = None
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

    async def _open(self) -> ComfySocket:
        ws, first = await open_socket(self.ws_url, self.open_timeout)
        hello = parse_frame(first)
        if isinstance(hello, Status) and hello.sid not in (None, self.client_id):
            log.warning("websocket %s answered with sid %r", self.ws_url, hello.sid)
        elif not isinstance(hello, Status):
            self._route(hello)
        return ws

    async def _read(self, ws: ComfySocket) -> None:
        reason = "closed"
        try:
            while True:
                self._route(parse_frame(await ws.recv()))
        except SocketDropped as exc:
            reason = str(exc)
        except Exception as exc:  # noqa: BLE001 - a bad frame must not leave subscribers waiting forever
            log.exception("websocket %s: reader failed", self.ws_url)
            reason = repr(exc)
        finally:
            if self._ws is ws:
                self._ws = None
            for sub in list(self.subscribers.values()):
                sub.queue.put_nowait(SocketClosed(reason))
            with contextlib.suppress(Exception):
                await ws.close()  # a dropped socket still holds its HTTP session

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
