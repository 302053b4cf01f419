"""WebSocket writes are coalesced per loop turn, keep per-socket order, and a slow consumer
is cut off with its memory bounded (issue 7)."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from coup.engine.handshake import HandshakeInfo
from coup.engine.options import EngineOptions
from coup.engine.server import EngineServer
from coup.engine.websocket import WebSocketTransport
from coup.protocol.wire import Outbound
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(30)


def _handshake() -> HandshakeInfo:
    return HandshakeInfo(headers={}, query={}, address="127.0.0.1", url="/", secure=False, issued=time.time())


async def _pair(engine: EngineServer) -> tuple[WebSocketTransport, socket.socket]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.create_connection(listener.getsockname())
    server_side, _ = listener.accept()
    listener.close()
    server_side.setblocking(False)
    _, transport = engine.open_websocket(_handshake())
    await asyncio.get_running_loop().connect_accepted_socket(lambda: transport, sock=server_side)
    return transport, client


def _frames(data: bytes) -> list[bytes]:
    out = []
    pos = 0
    while pos < len(data):
        length = data[pos + 1]
        assert length < 126
        out.append(data[pos + 2:pos + 2 + length])
        pos += 2 + length
    return out


@pytest.mark.asyncio
async def test_one_write_per_turn_in_order() -> None:
    engine = EngineServer(EngineOptions())
    transport, client = await _pair(engine)
    try:
        client.settimeout(5)
        opened = client.recv(4096)  # the OPEN packet
        assert _frames(opened)[0].startswith(b"0{")
        writes: list[bytes] = []
        real = transport._transport
        assert real is not None
        original_write = real.write

        class Spy:
            def __getattr__(self, name: str) -> object:
                return getattr(real, name)

            def write(self, data: bytes) -> None:
                writes.append(bytes(data))
                original_write(data)

        transport._transport = Spy()  # type: ignore[assignment]
        for i in range(50):
            transport.session.send(Outbound(f"4{i}"))
        assert writes == []  # nothing written before the loop turns
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert len(writes) == 1  # fifty packets, one write
        received = b""
        while len(received) < len(writes[0]):
            received += client.recv(65536)
        assert _frames(received) == [f"4{i}".encode() for i in range(50)]
    finally:
        client.close()
        engine.close_all()


@pytest.mark.asyncio
async def test_slow_consumer_is_disconnected_with_bounded_memory() -> None:
    limit = 256 * 1024
    engine = EngineServer(EngineOptions(max_buffered_bytes=limit))
    transport, client = await _pair(engine)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    session = transport.session
    chunk = Outbound("4" + "x" * 16_000)
    try:
        sent = 0
        for _ in range(2000):  # far more than the kernel buffers plus the limit
            if not session.open:
                break
            session.send(chunk)
            sent += chunk.size
            await asyncio.sleep(0)
        await eventually(lambda: not session.open, "the slow consumer was disconnected")
        assert session.close_reason in ("transport error", "transport close")
        # what was queued in user space never exceeded the limit by more than one turn's writes
        assert transport._pending == []
        assert sent < 2000 * chunk.size
    finally:
        client.close()
        engine.close_all()
