"""The front door serves WebSocket upgrades itself and hands everything else to Tornado unchanged."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import socketio
from tornado.testing import bind_unused_port

from coup.app import CoupNode
from coup.transports.websocket import native_unmask
from tests.conftest import RunningNode
from tests.conftest import test_settings as settings_for_tests

pytestmark = pytest.mark.timeout(30)


@pytest_asyncio.fixture(params=[True, False], ids=["front-door", "tornado-only"])
async def echo_node(request: pytest.FixtureRequest) -> AsyncIterator[RunningNode]:
    """A node whose "echo" event broadcasts to a room the socket joined, over either accept path."""
    sock, port = bind_unused_port()
    node = CoupNode(settings_for_tests(recovery_window=0.0, trusted_proxies=("127.0.0.0/8",)),
                    front_door=request.param)

    async def join(socket: Any, args: list[Any]) -> None:
        await socket.join(args[0])

    def echo(socket: Any, args: list[Any]) -> str:
        node.sio.main.to(args[0]).emit("echo", args[1], socket.handshake.address)
        return "ok"

    node.sio.main.on("join", join)
    node.sio.main.on("echo", echo)
    await node.start([sock])
    try:
        yield RunningNode(node, port)
    finally:
        await node.stop()


@pytest.mark.asyncio
@pytest.mark.parametrize("transports", [["websocket"], ["polling"], ["polling", "websocket"]])
async def test_clients_on_every_transport(echo_node: RunningNode, transports: list[str]) -> None:
    received: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
    client = socketio.AsyncClient(reconnection=False)
    client.on("echo", lambda *args: received.put_nowait(args))
    await client.connect(echo_node.url, transports=transports, wait_timeout=5)
    try:
        await client.call("join", "r1", timeout=5)
        for i in range(20):
            assert await client.call("echo", ("r1", i), timeout=5) == "ok"
        got = [await asyncio.wait_for(received.get(), 5) for _ in range(20)]
        assert [args[0] for args in got] == list(range(20))  # per-socket order holds
        assert got[0][1] == "127.0.0.1"
        if transports[-1] == "websocket":
            assert client.transport() == "websocket"
    finally:
        await client.disconnect()


@pytest.mark.asyncio
async def test_large_messages_cross_the_websocket_whole(echo_node: RunningNode) -> None:
    """Messages near COUP_MAX_PAYLOAD, text of multi-byte characters and a binary attachment, go
    through the node's frame reader (with the C mask the node is built with) both ways."""
    assert echo_node.node.engine.options.ws_unmask is native_unmask()
    # the client escapes non-ASCII in JSON (\u00e9): 60,000 x 14 = 840,000 bytes; COUP_MAX_PAYLOAD is 1,000,000
    text, blob = "é€ab" * 60_000, os.urandom(300_000)
    received: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
    client = socketio.AsyncClient(reconnection=False)
    client.on("echo", lambda *args: received.put_nowait(args))
    await client.connect(echo_node.url, transports=["websocket"], wait_timeout=5)
    try:
        await client.call("join", "r1", timeout=5)
        assert await client.call("echo", ("r1", {"text": text, "blob": blob}), timeout=10) == "ok"
        got = await asyncio.wait_for(received.get(), 10)
        assert got[0] == {"text": text, "blob": blob}
    finally:
        await client.disconnect()


async def _raw_request(port: int, head: str, read: int = 4096) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head.encode("latin-1"))
    await writer.drain()
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = await asyncio.wait_for(reader.read(read), 5)
            if not chunk:
                break
            data += chunk
        if b"\r\n\r\n" in data and not data.startswith(b"HTTP/1.1 101"):
            head_part, _, body = data.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head_part.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(body) < length:
                body += await asyncio.wait_for(reader.read(read), 5)
            data = head_part + b"\r\n\r\n" + body
        elif data.startswith(b"HTTP/1.1 101") and not data.split(b"\r\n\r\n", 1)[1]:
            data += await asyncio.wait_for(reader.read(read), 5)  # the OPEN frame
    finally:
        writer.close()
    return data


def _upgrade(path: str, *, version: str = "13", origin: str | None = None, extra: str = "") -> str:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", f"Sec-WebSocket-Version: {version}"]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    return "\r\n".join(lines) + "\r\n" + extra + "\r\n"


@pytest.mark.asyncio
async def test_refusals_are_tornados_answers(echo_node: RunningNode) -> None:
    port = echo_node.port
    bad_eio = await _raw_request(port, _upgrade("/socket.io/?EIO=3&transport=websocket"))
    assert bad_eio.startswith(b"HTTP/1.1 400")
    assert json.loads(bad_eio.split(b"\r\n\r\n", 1)[1]) == {"code": 5, "message": "Unsupported protocol version"}
    foreign = await _raw_request(port, _upgrade("/socket.io/?EIO=4&transport=websocket", origin="http://evil.test"))
    assert foreign.startswith(b"HTTP/1.1 403")
    old_version = await _raw_request(port, _upgrade("/socket.io/?EIO=4&transport=websocket", version="8"))
    assert old_version.startswith(b"HTTP/1.1 426")
    unknown_sid = await _raw_request(port, _upgrade("/socket.io/?EIO=4&transport=websocket&sid=nope"))
    assert json.loads(unknown_sid.split(b"\r\n\r\n", 1)[1]) == {"code": 1, "message": "Session ID unknown"}
    health = await _raw_request(port, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert health.startswith(b"HTTP/1.1 200") and b'"ok"' in health


@pytest.mark.asyncio
async def test_upgrade_answer_and_proxy_headers(echo_node: RunningNode) -> None:
    answer = await _raw_request(echo_node.port, _upgrade(
        "/socket.io/?EIO=4&transport=websocket", extra="X-Forwarded-For: 203.0.113.7\r\n"))
    assert answer.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    frame = answer.split(b"\r\n\r\n", 1)[1]
    assert frame[0] == 0x81 and frame[2:3] == b"0"  # unmasked text frame carrying OPEN
    open_info = json.loads(frame[3:2 + frame[1]].decode())
    session = echo_node.node.engine.sessions.get(open_info["sid"])
    if session is not None:  # the test client hung up; the session may be gone already
        assert session.handshake.address == "203.0.113.7"


@pytest.mark.asyncio
async def test_request_split_across_packets_and_pipelined_frame() -> None:
    """A head that arrives in pieces still upgrades; bytes after it reach the WebSocket."""
    sock, port = bind_unused_port()
    node = CoupNode(settings_for_tests(recovery_window=0.0))
    await node.start([sock])
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = _upgrade("/socket.io/?EIO=4&transport=websocket").encode()
        ping = bytes([0x81, 0x81, 1, 2, 3, 4, ord("2") ^ 1])  # masked text frame "2" (a client ping)
        writer.write(head[:20])
        await writer.drain()
        await asyncio.sleep(0.05)  # the subject: the head arrives in two pieces (nothing to await in between)
        writer.write(head[20:] + ping)
        await writer.drain()
        data = b""
        while data.count(b"\x81") < 2 or not data.endswith(b"3"):
            data += await asyncio.wait_for(reader.read(4096), 5)
        assert data.startswith(b"HTTP/1.1 101")
        assert data.endswith(b"\x81\x013")  # PONG to the pipelined PING
        writer.close()
    finally:
        await node.stop()


@pytest.mark.asyncio
@pytest.mark.parametrize("front_door", [True, False], ids=["front-door", "tornado-only"])
async def test_unfinished_head_is_timed_out_and_others_are_served(front_door: bool) -> None:
    """A connection that never finishes its request head is closed; the node serves everyone else."""
    sock, port = bind_unused_port()
    node = CoupNode(settings_for_tests(recovery_window=0.0, head_timeout=0.3, keepalive_timeout=0.3),
                    front_door=front_door)
    await node.start([sock])
    try:
        slow_reader, slow_writer = await asyncio.open_connection("127.0.0.1", port)
        slow_writer.write(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n")
        await slow_writer.drain()
        client = socketio.AsyncClient(reconnection=False)
        await client.connect(f"http://127.0.0.1:{port}", transports=["websocket"], wait_timeout=5)
        answer = await asyncio.wait_for(slow_reader.read(), 5)  # read() returns at EOF: closed by us
        if front_door:
            assert answer.startswith(b"HTTP/1.1 408 ")
        assert client.connected  # the WebSocket client outlives the timeout
        await client.disconnect()
        slow_writer.close()
    finally:
        await node.stop()


@pytest.mark.asyncio
async def test_idle_keep_alive_connection_is_closed() -> None:
    """After a complete request, a connection idle past the head timeout is closed by Tornado."""
    sock, port = bind_unused_port()
    node = CoupNode(settings_for_tests(recovery_window=0.0, head_timeout=0.3, keepalive_timeout=0.3))
    await node.start([sock])
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)  # the handshake, then EOF when idle
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert b'"sid"' in answer
        writer.close()
    finally:
        await node.stop()


@pytest.mark.asyncio
@pytest.mark.parametrize("front_door", [True, False], ids=["front-door", "tornado-only"])
async def test_nagle_stays_off_across_requests(front_door: bool) -> None:
    """Tornado's connections keep TCP_NODELAY on after each answer (no setsockopt pair per request)."""
    sock, port = bind_unused_port()
    node = CoupNode(settings_for_tests(recovery_window=0.0), front_door=front_door)
    await node.start([sock])
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(2):  # the second request runs on the state the first one's answer left
            # (a path Tornado serves: the front door answers polling requests itself)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            assert node.http_server is not None
            streams = [conn.stream for conn in node.http_server._connections]  # type: ignore[attr-defined]
            assert len(streams) == 1
            assert streams[0].socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        writer.close()
    finally:
        await node.stop()
