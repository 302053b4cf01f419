"""The front door serves SockJS xhr-streaming and xhr_send itself, with Tornado's bytes on the wire.

Every answer is compared byte for byte (but the date and the core's random ids) with the answer
of a node that serves the same requests through Tornado only.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio
from tornado.testing import bind_unused_port

from coup.app import CoupNode
from tests.conftest import RunningNode
from tests.conftest import test_settings as settings_for_tests
from tests.transports.test_front_door_polling import Conn as PollingConn
from tests.transports.test_front_door_polling import _tornado_connections
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(30)

GOOD = "http://good.test"
STREAM = "/sockjs/000/{sid}/xhr_streaming"
SEND = "/sockjs/000/{sid}/xhr_send"
AUTH = json.dumps([json.dumps({"type": "auth", "auth": {}})]).encode()
LAST_CHUNK = b"0\r\n\r\n"


async def _start(front_door: bool) -> RunningNode:
    sock, port = bind_unused_port()
    node = CoupNode(settings_for_tests(recovery_window=0.0, allowed_origins=(GOOD,)), front_door=front_door)
    await node.start([sock])
    return RunningNode(node, port)


@pytest_asyncio.fixture
async def door_node() -> AsyncIterator[RunningNode]:
    running = await _start(True)
    try:
        yield running
    finally:
        await running.stop()


class Conn(PollingConn):
    """One client connection: POSTs written raw; a stream read chunk by chunk."""

    def send(self, target: str, body: bytes = b"", headers: str = "") -> None:  # type: ignore[override]
        super().send("POST", target, body, headers)

    async def head(self) -> bytes:
        return await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)

    async def answer(self, target: str, body: bytes = b"", headers: str = "") -> bytes:  # type: ignore[override]
        """A whole answer with a Content-Length (or none, a 204)."""
        self.send(target, body, headers)
        head = await self.head()
        lengths = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")]
        return head + (await asyncio.wait_for(self.reader.readexactly(lengths[0]), 5) if lengths else b"")

    async def chunk(self) -> bytes:
        """The next chunk of a chunked body, framing included (b"0\\r\\n\\r\\n" at its end)."""
        size = await asyncio.wait_for(self.reader.readuntil(b"\r\n"), 5)
        return size + await asyncio.wait_for(self.reader.readexactly(int(size, 16) + 2), 5)

    async def chunks_until(self, marker: bytes) -> list[bytes]:
        chunks = [await self.chunk()]
        while marker not in chunks[-1]:
            chunks.append(await self.chunk())
        return chunks

def _normal(data: bytes) -> bytes:
    data = re.sub(rb"Date: [^\r]*\r\n", b"Date: -\r\n", data)
    return re.sub(rb'\\"(sid|pid)\\":\\"[^\\]*\\"', rb'\\"\1\\":\\"-\\"', data)


async def _script(node: RunningNode) -> tuple[list[bytes], int]:
    """Requests covering the door's decisions; also how many connections Tornado took while
    only what the door serves had been asked."""
    origin = f"Origin: {GOOD}\r\n"
    answers: list[bytes] = []
    stream = await Conn.open(node.port)
    stream.send(STREAM.format(sid="s1"), headers=origin + "Access-Control-Request-Headers: x-a\r\n")
    answers.append(await stream.head())
    answers.extend(await stream.chunks_until(b"o\n"))  # the prelude, then the open frame
    sender = await Conn.open(node.port)
    answers.append(await sender.answer(SEND.format(sid="s1"), AUTH))  # 204, no Origin: *
    answers.extend(await stream.chunks_until(b"connect"))
    served_by_tornado = _tornado_connections(node.node)
    answers.append(await sender.answer(SEND.format(sid="s1"), b"[broken"))  # 500 Broken JSON
    sender = await Conn.open(node.port)
    answers.append(await sender.answer(SEND.format(sid="nope"), b'["x"]'))  # 404
    sender = await Conn.open(node.port)
    answers.append(await sender.answer(SEND.format(sid="s1"), AUTH, "Origin: http://evil.test\r\n"))  # 403
    sender = await Conn.open(node.port)
    second = await Conn.open(node.port)
    second.send(STREAM.format(sid="s1"))  # the session has its stream: 2010 and the end
    answers.append(await second.head())
    answers.extend(await second.chunks_until(LAST_CHUNK))
    answers.append(await sender.answer(STREAM.format(sid="s2"), headers="Origin: http://evil.test\r\n"))  # 403
    await node.stop()  # the session's close frame, then the end of the answer
    answers.extend(await stream.chunks_until(LAST_CHUNK))
    for conn in (stream, sender, second):
        conn.close()
    return [_normal(a) for a in answers], served_by_tornado


Script = Callable[[RunningNode], Awaitable[tuple[list[bytes], int]]]


async def _both_ways(script: Script) -> tuple[dict[bool, list[bytes]], dict[bool, int]]:
    """`script`'s answers and Tornado's connection count, with the front door (True) and without."""
    scripts: dict[bool, list[bytes]] = {}
    tornado: dict[bool, int] = {}
    for front_door in (True, False):
        running = await _start(front_door)
        try:
            scripts[front_door], tornado[front_door] = await script(running)
        finally:
            await running.stop()
    return scripts, tornado


@pytest.mark.asyncio
async def test_answers_are_tornados_byte_for_byte() -> None:
    """The same requests get the same bytes with and without the front door, and with it the
    stream and the send are not Tornado's."""
    scripts, tornado = await _both_ways(_script)
    assert scripts[True] == scripts[False]
    statuses = [a.split(b" ", 2)[1] for a in scripts[True] if a.startswith(b"HTTP/1.1")]
    assert statuses == [b"200", b"204", b"500", b"404", b"403", b"200", b"403"]
    assert b'c[2010,"Another connection still open"]\n' in b"".join(scripts[True])
    assert scripts[True][-2:] == [b'1f\r\nc[4000,"server shutting down"]\n\r\n', LAST_CHUNK]
    assert tornado == {True: 0, False: 2}


POLL = "/sockjs/000/{sid}/xhr"


async def _polling_script(node: RunningNode) -> tuple[list[bytes], int]:
    """xhr polling: the open frame, a held poll answered by the auth's frame, an overlapping
    poll refused, a held poll answered with the close frame on shutdown."""
    origin = f"Origin: {GOOD}\r\n"
    answers: list[bytes] = []
    poll = await Conn.open(node.port)
    poll.send(POLL.format(sid="p1"), headers=origin)
    answers.append(await poll.head())
    answers.extend(await poll.chunks_until(LAST_CHUNK))  # o
    poll.send(POLL.format(sid="p1"), headers=origin)  # held: nothing queued
    session = _session(node, "p1")
    await eventually(lambda: session.handler is not None, "the poll held")
    sender = await Conn.open(node.port)
    answers.append(await sender.answer(SEND.format(sid="p1"), AUTH))
    answers.append(await poll.head())
    answers.extend(await poll.chunks_until(LAST_CHUNK))  # the connect frame
    poll.send(POLL.format(sid="p1"))  # held again
    await eventually(lambda: session.handler is not None, "the poll held")
    second = await Conn.open(node.port)
    second.send(POLL.format(sid="p1"))  # the session has its poll: 2010
    answers.append(await second.head())
    answers.extend(await second.chunks_until(LAST_CHUNK))
    served_by_tornado = _tornado_connections(node.node)
    await node.stop()  # the held poll gets the close frame
    answers.append(await poll.head())
    answers.extend(await poll.chunks_until(LAST_CHUNK))
    for conn in (poll, sender, second):
        conn.close()
    return [_normal(a) for a in answers], served_by_tornado


@pytest.mark.asyncio
async def test_polling_answers_are_tornados_byte_for_byte() -> None:
    scripts, tornado = await _both_ways(_polling_script)
    assert scripts[True] == scripts[False]
    text = b"".join(scripts[True])
    assert b"\r\n2\r\no\n\r\n" in text and b'c[2010,"Another connection still open"]' in text
    assert scripts[True][-2:] == [b'1f\r\nc[4000,"server shutting down"]\n\r\n', LAST_CHUNK]
    assert tornado == {True: 0, False: 3}


@pytest.mark.asyncio
async def test_hang_up_of_a_held_poll_closes_the_session(door_node: RunningNode) -> None:
    conn = await Conn.open(door_node.port)
    conn.send(POLL.format(sid="hp"))
    await conn.head()
    await conn.chunks_until(LAST_CHUNK)
    conn.send(POLL.format(sid="hp"))
    session = _session(door_node, "hp")
    await eventually(lambda: session.handler is not None, "the poll held")
    assert _tornado_connections(door_node.node) == 0  # held by the front door
    conn.close()
    await eventually(lambda: session.is_closed, "the session closed")
    assert session.close_reason == (1002, "Connection interrupted")


def _session(node: RunningNode, sid: str) -> Any:
    assert node.node.sockjs is not None
    return node.node.sockjs.router.get_session(sid)


@pytest.mark.asyncio
async def test_stream_ends_at_the_response_limit_and_the_connection_serves_the_next(door_node: RunningNode) -> None:
    assert door_node.node.sockjs is not None
    door_node.node.sockjs.router.settings["response_limit"] = 4096
    conn = await Conn.open(door_node.port)
    conn.send(STREAM.format(sid="lim"))
    await conn.head()
    await conn.chunks_until(b"o\n")
    session = _session(door_node, "lim")
    for n in range(8):
        session.send_message(f"{n:04d}" + "x" * 996)
        await asyncio.sleep(0)  # one frame per loop turn
    chunks = await conn.chunks_until(LAST_CHUNK)
    sent = b"".join(chunks)
    assert chunks[-1] == LAST_CHUNK
    assert 4096 <= len(sent) < 4096 + 2100
    assert session.handler is None and not session.is_closed  # the session waits for its next request
    # the same keep-alive connection, the next stream: what was queued behind the limit
    conn.send(STREAM.format(sid="lim"))
    await conn.head()
    rest = b"".join(await conn.chunks_until(b"0007"))
    got = re.findall(rb"\d{4}x", sent + rest)
    assert got == [b"%04dx" % n for n in range(8)]
    assert _tornado_connections(door_node.node) == 0
    conn.close()


@pytest.mark.asyncio
async def test_hang_up_closes_the_session_and_frees_the_connection(door_node: RunningNode) -> None:
    conn = await Conn.open(door_node.port)
    conn.send(STREAM.format(sid="gone"))
    await conn.head()
    await conn.chunks_until(b"o\n")
    sender = await Conn.open(door_node.port)
    await sender.answer(SEND.format(sid="gone"), AUTH)
    session = _session(door_node, "gone")
    engine = door_node.node.engine
    await eventually(lambda: len(engine.sessions) == 1, "the core session")
    door = door_node.node._front_door
    assert door is not None
    connections = len(door.connections)
    conn.close()
    await eventually(lambda: session.is_closed and session.handler is None, "the session closed")
    assert session.close_reason == (1002, "Connection interrupted")
    await eventually(lambda: not engine.sessions, "the core session closed")
    await eventually(lambda: len(door.connections) == connections - 1, "the connection released")
    sender.close()


@pytest.mark.asyncio
async def test_a_reader_that_stops_reading_is_cut_off_at_the_buffer_bound(door_node: RunningNode) -> None:
    assert door_node.node.sockjs is not None and door_node.node._front_door is not None
    door_node.node.sockjs.router.settings["response_limit"] = 1 << 40
    sockjs = door_node.node._front_door.sockjs
    assert sockjs is not None
    sockjs.max_buffer = 256 * 1024
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(("127.0.0.1", door_node.port))
    client.sendall(f"POST {STREAM.format(sid='slow')} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode())
    await eventually(lambda: _session(door_node, "slow") is not None, "the session")
    session = _session(door_node, "slow")
    stream = session.handler
    payload = "y" * 16384
    sent = 0
    while not session.is_closed and sent < 4000:  # never read: the kernel's buffers fill, then ours
        session.send_message(payload)
        sent += 1
        await asyncio.sleep(0)
    assert session.is_closed
    assert session.close_reason == (1002, "Connection interrupted")
    assert stream._transport is None  # written no more
    assert sent * len(payload) < 4 * 1024 * 1024  # cut off near the bound (256 KiB + the kernel's buffers)
    client.close()
