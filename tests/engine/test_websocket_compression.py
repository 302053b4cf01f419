"""permessage-deflate end to end: negotiation in both handshake paths (the front door of a
CoupNode and Tornado's handler), round trips with the `websockets` client (which compresses
every message it sends), the threshold, one compressed frame shared by every receiver of a
broadcast, and a deflate bomb refused with 1009 (issue 14)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import websockets
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

from coup.config import Secret
from coup.engine.options import EngineOptions
from coup.protocol import deflate
from coup.protocol.deflate import compress_message
from tests.conftest import NodeStarter
from tests.servers import WS_PATH, RunningServer, serve
from tests.wsclient import OP_BINARY, OP_CLOSE, OP_TEXT, RawWebSocket, client_frame

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

BROWSER_OFFER = "permessage-deflate; client_max_window_bits"


@pytest_asyncio.fixture
async def server() -> AsyncIterator[RunningServer]:
    """Tornado's upgrade handler, compression on with Node's default threshold."""
    async with serve(EngineOptions(ws_compression=True)) as running:
        running.sio.main.on("echo", lambda socket, args: args[0])
        yield running


async def _sio(port: int, **options: Any) -> websockets.ClientConnection:
    """A Socket.IO connection spoken by hand over the `websockets` client."""
    ws = await websockets.connect(f"ws://127.0.0.1:{port}{WS_PATH}", **options)
    assert (await ws.recv()).startswith("0{")
    await ws.send("40")
    assert str(await ws.recv()).startswith("40{")
    return ws


async def _next(ws: websockets.ClientConnection) -> str:
    """The next Socket.IO message, skipping Engine.IO pings (answered as a client must)."""
    async with asyncio.timeout(5):
        while True:
            message = str(await ws.recv())
            if message == "2":
                await ws.send("3")
                continue
            return message


async def _raw(port: int, offer: str | None = BROWSER_OFFER) -> RawWebSocket:
    ws = await RawWebSocket.connect(port, WS_PATH, extensions=offer)
    assert (await ws.recv_text()).startswith("0{")
    ws.send_text("40")
    assert (await ws.recv_text()).startswith("40{")
    return ws


def _inflate(payload: bytes) -> str:
    import zlib
    return zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff").decode()


async def test_round_trip_with_the_websockets_client_through_tornado(server: RunningServer) -> None:
    ws = await _sio(server.port)
    assert ws.response is not None
    assert ws.response.headers["Sec-WebSocket-Extensions"] == "permessage-deflate; server_no_context_takeover"
    for size in (10, 1023, 1024, 50_000):
        text = ("chat " * size)[:size]
        await ws.send(f'421["echo",{json.dumps(text)}]')  # websockets compresses what it sends
        assert json.loads((await _next(ws))[3:]) == [text]
    await ws.close()


async def test_round_trip_through_the_front_door_and_off_by_default(node_factory: NodeStarter) -> None:
    on = await node_factory(ws_compression=True)
    off = await node_factory(metrics_token=Secret("m" * 32))
    for running, expected in ((on, "permessage-deflate; server_no_context_takeover"), (off, None)):
        running.node.sio.main.on("echo", lambda socket, args: args[0])
        ws = await _sio(running.port)
        assert ws.response is not None
        assert ws.response.headers.get("Sec-WebSocket-Extensions") == expected
        await ws.send('421["echo",' + json.dumps("x" * 5000) + "]")
        assert json.loads((await _next(ws))[3:]) == ["x" * 5000]
        await ws.close()
    assert off.node.metrics is not None and dict(off.node.metrics.ws_compression) == {"declined": 1}


async def test_threshold_leaves_short_messages_uncompressed(server: RunningServer) -> None:
    ws = await _raw(server.port)
    assert ws.header("Sec-WebSocket-Extensions") == "permessage-deflate; server_no_context_takeover"
    # '42["n","' + s + '"]' is 10 + len(s) bytes (recovery off): 1023 goes plain, 1024 compressed
    server.sio.main.emit("n", "a" * 1013)
    server.sio.main.emit("n", "b" * 1014)
    short, long = await ws.recv(), await ws.recv()
    assert (short.opcode, short.rsv, len(short.payload)) == (OP_TEXT, 0, 1023)
    assert (long.opcode, long.rsv) == (OP_TEXT, 0b100)
    assert len(long.payload) < 50
    assert _inflate(long.payload) == '42["n","' + "b" * 1014 + '"]'
    await ws.close()


async def test_a_broadcast_is_compressed_once_for_every_receiver(
        server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = deflate.compress_message

    def counting(payload: bytes, window_bits: int = 15) -> bytes:
        calls.append(window_bits)
        return real(payload, window_bits)

    monkeypatch.setattr(deflate, "compress_message", counting)
    receivers = [await _raw(server.port) for _ in range(4)]
    other_window = await _raw(server.port, "permessage-deflate; server_max_window_bits=10")
    plain = await _raw(server.port, None)  # declined to compress: gets the plain frame
    note = {"title": "Exam moved", "body": "The exam of the study group moves to room 4. " * 40}
    server.sio.main.emit("notification", note)
    frames = [await ws.recv() for ws in receivers]
    assert all(f.rsv == 0b100 for f in frames)
    assert len({f.payload for f in frames}) == 1  # byte-identical: no context takeover
    assert frames[0].payload == compress_message(('42["notification",' + json.dumps(
        note, separators=(",", ":")) + "]").encode())
    small = await other_window.recv()
    assert small.rsv == 0b100 and json.loads(_inflate(small.payload)[2:]) == ["notification", note]
    unpacked = await plain.recv()
    assert unpacked.rsv == 0 and json.loads(unpacked.payload[2:]) == ["notification", note]
    assert sorted(calls) == [10, 15]  # once per parameter set, not once per receiver
    for ws in [*receivers, other_window, plain]:
        await ws.close()


@pytest.mark.parametrize("path", ["front door", "tornado"])
async def test_deflate_bomb_is_refused_with_1009(path: str, node_factory: NodeStarter,
                                                  server: RunningServer) -> None:
    port = (await node_factory(ws_compression=True)).port if path == "front door" else server.port
    ws = await _raw(port)
    bomb = compress_message(b"\x00" * (64 * 1024 * 1024))  # 64 MiB of zeros in ~64 KB
    assert len(bomb) < 1_000_000  # under COUP_MAX_PAYLOAD as sent
    ws.send(client_frame(OP_BINARY, bomb, rsv=0b100))
    assert await ws.expect_close(timeout=10) == 1009
    await ws.close()


async def test_client_window_and_reset_parameters_round_trip(server: RunningServer) -> None:
    for factory in (ClientPerMessageDeflateFactory(server_max_window_bits=9, client_max_window_bits=9,
                                                   client_no_context_takeover=True),
                    ClientPerMessageDeflateFactory(server_no_context_takeover=True, server_max_window_bits=8)):
        ws = await _sio(server.port, extensions=[factory], compression=None)
        text = "study notes " * 3000
        for _ in range(3):  # several messages: the windows and resets agreed are kept
            await ws.send(f'421["echo",{json.dumps(text)}]')
            assert json.loads((await _next(ws))[3:]) == [text]
        await ws.close()


async def test_compressed_message_before_negotiation_is_a_protocol_error(server: RunningServer) -> None:
    ws = await _raw(server.port, None)
    ws.send(client_frame(OP_TEXT, compress_message(b'42["echo","x"]'), rsv=0b100))
    frame = await ws.recv()
    while frame.opcode != OP_CLOSE:
        frame = await ws.recv()
    assert frame.close_code == 1002
    await ws.close()


async def test_node_socketio_client_compresses_both_ways(node_factory: NodeStarter, js_client: Any) -> None:
    """npm socket.io-client under Node offers permessage-deflate (`perMessageDeflate`, threshold
    1024) through `ws`: a 5.6 KB echo crosses the wire in a few hundred bytes each way."""
    running = await node_factory(ws_compression=True, metrics_token=Secret("m" * 32))
    running.node.sio.main.on("echo", lambda socket, args: args[0])
    metrics = running.node.metrics
    assert metrics is not None
    js = await js_client()
    assert (await js.connect("a", running.url, transports=["websocket"]))["type"] == "connect"
    text = "lecture notes " * 400
    assert await js.emit_with_ack("a", "echo", text) == [text]
    assert dict(metrics.ws_compression) == {"negotiated": 1}
    assert metrics.bytes_received["websocket"] < 1000 and metrics.bytes_sent["websocket"] < 1000
    assert (await js.connect("b", running.url, transports=["websocket"], perMessageDeflate=False))["type"] \
        == "connect"
    assert await js.emit_with_ack("b", "echo", text) == [text]
    assert dict(metrics.ws_compression) == {"negotiated": 1}  # no offer, nothing counted
    assert metrics.bytes_sent["websocket"] > len(text)
