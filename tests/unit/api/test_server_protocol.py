"""TurnWriter: a connection's writes of one event-loop turn leave as one write, in order."""

from __future__ import annotations

import asyncio

import pytest

from comfyfleet.api.server import TurnWriter


class Recorder:
    """The real transport's side: what was written, and in how many writes."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = self.aborted = self.eof = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def write_eof(self) -> None:
        self.eof = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


async def turn() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


@pytest.mark.asyncio
async def test_the_writes_of_one_turn_are_one_write_in_order() -> None:
    real = Recorder()
    writer = TurnWriter(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    writer.write(b"HTTP/1.1 202 Accepted\r\n\r\n")
    writer.write(b"")
    writer.writelines([b"{", bytearray(b'"a":1'), memoryview(b"}")])
    assert real.writes == [] and writer.get_write_buffer_size() == 32
    await turn()
    assert real.writes == [b'HTTP/1.1 202 Accepted\r\n\r\n{"a":1}']
    writer.write(b"data: 1\n\n")  # a later turn's chunk is its own write
    await turn()
    assert real.writes[1:] == [b"data: 1\n\n"]
    assert writer.get_extra_info("peername") == "info:peername"  # the rest is the real transport's


@pytest.mark.asyncio
async def test_close_and_eof_send_what_is_pending_first_abort_drops_it() -> None:
    real = Recorder()
    writer = TurnWriter(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    writer.write(b"bye")
    writer.write_eof()
    assert real.writes == [b"bye"] and real.eof
    writer.write(b"last")
    writer.close()
    assert real.writes == [b"bye", b"last"] and real.closed
    await turn()  # the flush scheduled by the first write finds nothing left
    assert real.writes == [b"bye", b"last"]

    other = Recorder()
    aborted = TurnWriter(other, asyncio.get_running_loop())  # type: ignore[arg-type]
    aborted.write(b"never")
    aborted.abort()
    await turn()
    assert other.writes == [] and other.aborted


@pytest.mark.asyncio
async def test_a_peer_gone_before_the_turn_ends_gets_nothing_written() -> None:
    real = Recorder()
    writer = TurnWriter(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    writer.write(b"late")
    real.closed = True  # connection_lost while the write waited for the turn's end
    await turn()
    assert real.writes == []
