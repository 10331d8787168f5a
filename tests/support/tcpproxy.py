"""A small TCP proxy for fault tests: put it between a client and a server, then delay, stall or reset traffic.

    proxy = TcpProxy("127.0.0.1", sim.port)          # listens on its own free port
    registry.upsert(..., proxy.url)                    # the dispatcher talks to the pod through it
    proxy.delay(0.5)    # every chunk in both directions waits 0.5 s
    proxy.stall()       # connections stay open, no byte moves (a hung network path)
    proxy.reset()       # every open connection gets a TCP RST; new ones are reset on accept
    proxy.hold(b"POST /prompt", 2.0)  # requests starting so wait 2 s on their way to the server (`held` is set)
    proxy.heal()        # back to passing traffic through
    proxy.stop()

Threads, not asyncio, so sync tests can drive it directly. Closing with SO_LINGER 0 sends a real RST,
which is what a dropped NAT entry or a dead node looks like to the peer.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time

from tests.support.procs import free_port

_CHUNK = 64 * 1024
_POLL = 0.05


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, listen_host: str = "127.0.0.1", port: int | None = None):
        self.target = (target_host, target_port)
        self.port = port or free_port(listen_host)
        self.host = listen_host
        self._mode = "pass"
        self._delay = 0.0
        self._hold: tuple[bytes, float] | None = None
        self.held = threading.Event()
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._stopped = threading.Event()
        self._server = socket.create_server((listen_host, self.port), reuse_port=False)
        self._server.settimeout(_POLL)
        self.accepted = 0
        self._thread = threading.Thread(target=self._accept_loop, name=f"tcpproxy-{self.port}", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # --- faults -------------------------------------------------------------------------------------
    def delay(self, seconds: float) -> None:
        self._mode, self._delay = "pass", seconds

    def stall(self) -> None:
        self._mode = "stall"

    def reset(self) -> None:
        """Reset every open connection now, and every new one until heal()."""
        self._mode = "reset"
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            _rst(conn)

    def hold(self, prefix: bytes, seconds: float) -> None:
        """Client bytes that begin with prefix (a request line: b"POST /prompt") wait `seconds` before they go on
        to the server; `held` is set as one starts waiting. Other traffic passes as before."""
        self._hold = (prefix, seconds)

    def heal(self) -> None:
        self._mode, self._delay, self._hold = "pass", 0.0, None

    def stop(self) -> None:
        self._stopped.set()
        self._server.close()
        self._thread.join(timeout=5)
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.close()

    # --- plumbing -----------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            if self._mode == "reset":
                _rst(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _rst(client)
                continue
            with self._lock:
                self._conns += [client, upstream]
            for src, dst, outbound in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(src, dst, outbound), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, outbound: bool) -> None:
        src.settimeout(_POLL)
        try:
            while not self._stopped.is_set():
                while self._mode == "stall" and not self._stopped.is_set():
                    time.sleep(_POLL)  # hold the bytes: neither side sees anything, nothing is closed
                try:
                    data = src.recv(_CHUNK)
                except TimeoutError:
                    continue
                if not data:
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
                    return
                if self._delay:
                    time.sleep(self._delay)
                hold = self._hold
                if outbound and hold is not None and data.startswith(hold[0]):
                    self.held.set()
                    time.sleep(hold[1])
                dst.sendall(data)
        except OSError:
            _rst(dst)


def _rst(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()
