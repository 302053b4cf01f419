"""The front door serves long-polling itself, on keep-alive connections, with Tornado's answers.

Every answer the fast path gives is compared byte for byte (but the sid and the date) with the
answer of a node that serves the same requests through Tornado only.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from hypothesis import given, settings
from hypothesis import strategies as st
from tornado.escape import parse_qs_bytes
from tornado.testing import bind_unused_port

from coup.app import CoupNode
from coup.engine.polling import PollingTransport
from coup.transports.http1 import parse_query
from tests.conftest import RunningNode
from tests.conftest import test_settings as settings_for_tests
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(30)

PATH = "/socket.io/?EIO=4&transport=polling"
GOOD = "http://good.test"


@pytest_asyncio.fixture(params=[True, False], ids=["front-door", "tornado-only"])
async def node(request: pytest.FixtureRequest) -> AsyncIterator[RunningNode]:
    sock, port = bind_unused_port()
    node = CoupNode(settings_for_tests(recovery_window=0.0, allowed_origins=(GOOD,), max_payload=2000,
                                       head_timeout=1.0, body_timeout=0.5, keepalive_timeout=1.0),
                    front_door=request.param)
    await node.start([sock])
    running = RunningNode(node, port)
    try:
        yield running
    finally:
        await running.stop()


class Conn:
    """One client connection, requests written raw, answers read whole (Content-Length, or a
    chunked body, returned without its framing)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Conn:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    def send(self, method: str, target: str, body: bytes = b"", headers: str = "") -> None:
        length = f"Content-Length: {len(body)}\r\n" if method == "POST" else ""
        self.writer.write(f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}{length}\r\n".encode() + body)

    async def answer(self) -> bytes:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        if b"\r\ntransfer-encoding: chunked\r\n" in head.lower():
            body = b""
            while size := int(await asyncio.wait_for(self.reader.readuntil(b"\r\n"), 5), 16):
                body += (await asyncio.wait_for(self.reader.readexactly(size + 2), 5))[:-2]
            await asyncio.wait_for(self.reader.readexactly(2), 5)  # the empty trailer
            return head + body
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        return head + await asyncio.wait_for(self.reader.readexactly(length), 5)

    async def request(self, method: str, target: str, body: bytes = b"", headers: str = "") -> bytes:
        self.send(method, target, body, headers)
        return await self.answer()

    async def closed(self) -> bool:
        """Whether the server closes the connection (EOF) without another byte."""
        return await asyncio.wait_for(self.reader.read(), 5) == b""

    def close(self) -> None:
        self.writer.close()


def _sid(answer: bytes) -> str:
    return str(json.loads(answer.split(b"\r\n\r\n", 1)[1][1:])["sid"])


def _normal(answer: bytes, *sids: str) -> bytes:
    """The answer without what differs between two runs: the date and the session ids."""
    answer = re.sub(rb"Date: [^\r]*\r\n", b"Date: -\r\n", answer)
    for sid in sids:
        answer = answer.replace(sid.encode(), b"<sid>")
    return answer


def _tornado_connections(node: CoupNode) -> int:
    assert node.http_server is not None
    return len(node.http_server._connections)  # type: ignore[attr-defined]


async def _script(node: RunningNode) -> list[bytes]:
    """Requests covering the fast path's decisions, on as few connections as a client uses."""
    answers: list[bytes] = []
    conn = await Conn.open(node.port)
    origin = f"Origin: {GOOD}\r\n"
    opened = await conn.request("GET", PATH, headers=origin)
    sid = _sid(opened)
    url = f"{PATH}&sid={sid}"
    answers.append(opened)
    answers.append(await conn.request("POST", url, b"40", headers=origin + "Content-Type: text/plain\r\n"))
    answers.append(await conn.request("GET", url, headers=origin))  # CONNECT's answer: 40{"sid":...}
    socket_sid = json.loads(answers[-1].split(b"\r\n\r\n", 1)[1][2:])["sid"]
    answers.append(await conn.request("GET", url, headers="Origin: http://evil.test\r\n"))  # 403
    answers.append(await conn.request("POST", url, b"40", headers="Origin: http://evil.test\r\n"))  # 403
    answers.append(await conn.request("GET", f"{PATH}&sid=nope"))  # 400 unknown sid
    answers.append(await conn.request("GET", "/socket.io/?EIO=3&transport=polling"))  # 400 protocol version
    answers.append(await conn.request("PUT", url))  # 400 method
    answers.append(await conn.request("POST", url, b"x" * 2500))  # over maxPayload: 400, session closed
    conn.close()  # Tornado answered before reading the body: it closes the connection
    conn = await Conn.open(node.port)
    answers.append(await conn.request("GET", url))  # the session is gone
    second = _sid(await conn.request("GET", PATH))
    answers.append(await conn.request("POST", f"{PATH}&sid={second}", b"9\x00garbage", headers=origin))  # 400
    conn.close()
    return [_normal(a, sid, second, socket_sid) for a in answers]


@pytest.mark.asyncio
async def test_answers_are_tornados_byte_for_byte() -> None:
    """The same requests get the same answers, headers included, with and without the front door."""
    scripts: dict[bool, list[bytes]] = {}
    for front_door in (True, False):
        sock, port = bind_unused_port()
        node = CoupNode(settings_for_tests(recovery_window=0.0, allowed_origins=(GOOD,), max_payload=2000),
                        front_door=front_door)
        await node.start([sock])
        try:
            scripts[front_door] = await _script(RunningNode(node, port))
        finally:
            await node.stop()
    assert scripts[True] == scripts[False]
    statuses = [a.split(b" ", 2)[1] for a in scripts[True]]
    assert statuses == [b"200", b"200", b"200", b"403", b"403", b"400", b"400", b"400", b"400", b"400", b"400"]
    opened = scripts[True][0]
    assert b"Access-Control-Allow-Origin: http://good.test\r\n" in opened
    assert b"X-Content-Type-Options: nosniff\r\n" in opened and b"Server:" not in opened


@pytest.mark.asyncio
async def test_keep_alive_polls_stay_off_tornado(node: RunningNode) -> None:
    """Handshake, sends and polls on one connection: served by the front door to the end."""
    conn = await Conn.open(node.port)
    url = f"{PATH}&sid={_sid(await conn.request('GET', PATH))}"
    assert (await conn.request("POST", url, b"40")).endswith(b"\r\n\r\nok")
    assert b'\r\n\r\n40{"sid":' in await conn.request("GET", url)
    for _ in range(5):  # PING -> PONG, on the same connection each time
        assert (await conn.request("POST", url, b"2")).endswith(b"ok")
        assert (await conn.request("GET", url)).endswith(b"\r\n\r\n3")
    assert _tornado_connections(node.node) == (0 if node.node.front_door else 1)
    conn.close()


@pytest.mark.asyncio
async def test_connection_close_is_honoured(node: RunningNode) -> None:
    conn = await Conn.open(node.port)
    url = f"{PATH}&sid={_sid(await conn.request('GET', PATH))}"
    assert (await conn.request("POST", url, b"40", headers="Connection: close\r\n")).endswith(b"ok")
    assert await conn.closed()


@pytest.mark.asyncio
async def test_pipelined_requests_are_answered_in_order(node: RunningNode) -> None:
    """Requests written together are answered one after the other, a held GET's answer first."""
    conn = await Conn.open(node.port)
    url = f"{PATH}&sid={_sid(await conn.request('GET', PATH))}"
    conn.send("GET", url)  # held: nothing is queued
    await asyncio.sleep(0.05)
    conn.send("POST", url, b"40")  # behind the held GET on the same connection: waits for its answer
    poster = await Conn.open(node.port)
    assert (await poster.request("POST", url, b"2")).endswith(b"ok")  # PING: the held GET gets PONG
    assert (await conn.answer()).endswith(b"\r\n\r\n3")
    assert (await conn.answer()).endswith(b"\r\n\r\nok")
    assert b'\r\n\r\n40{"sid":' in await conn.request("GET", url)
    conn.close()
    poster.close()


@pytest.mark.asyncio
async def test_hung_up_poll_frees_the_session(node: RunningNode) -> None:
    """A held GET whose client closes the socket is cancelled; the next GET gets what came since."""
    conn = await Conn.open(node.port)
    sid = _sid(await conn.request("GET", PATH))
    url = f"{PATH}&sid={sid}"
    transport = node.node.engine.sessions[sid].transport
    assert isinstance(transport, PollingTransport)
    conn.send("GET", url)
    await eventually(lambda: transport.waiting, "the GET is held")
    conn.close()
    await eventually(lambda: not transport.waiting, "the held GET is cancelled")
    poster = await Conn.open(node.port)
    assert (await poster.request("POST", url, b"2")).endswith(b"ok")  # PING, answered while no GET waits
    assert (await poster.request("GET", url)).endswith(b"\r\n\r\n3")  # not an overlapping poll
    assert node.node.engine.sessions[sid].open
    poster.close()


@pytest.mark.asyncio
async def test_body_split_across_reads(node: RunningNode) -> None:
    conn = await Conn.open(node.port)
    url = f"{PATH}&sid={_sid(await conn.request('GET', PATH))}"
    conn.writer.write(f"POST {url} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n4".encode())
    await conn.writer.drain()
    await asyncio.sleep(0.05)  # the subject: the body's second byte comes in a later read
    conn.writer.write(b"0")
    assert (await conn.answer()).endswith(b"\r\n\r\nok")
    assert b'\r\n\r\n40{"sid":' in await conn.request("GET", url)
    conn.close()


@pytest.mark.asyncio
async def test_other_requests_go_to_tornado_mid_connection(node: RunningNode) -> None:
    """A request the fast path does not serve hands the connection, from that request on, to Tornado."""
    conn = await Conn.open(node.port)
    url = f"{PATH}&sid={_sid(await conn.request('GET', PATH))}"
    assert b'"ok"' in await conn.request("GET", "/healthz")
    assert _tornado_connections(node.node) == 1
    assert (await conn.request("POST", url, b"40")).endswith(b"ok")  # Tornado serves the rest
    assert b'\r\n\r\n40{"sid":' in await conn.request("GET", url)
    conn.close()


@pytest.mark.asyncio
async def test_late_body_and_idle_connection_are_closed(node: RunningNode) -> None:
    """COUP_BODY_TIMEOUT for a body that stops coming, COUP_KEEPALIVE_TIMEOUT between two requests."""
    conn = await Conn.open(node.port)
    url = f"{PATH}&sid={_sid(await conn.request('GET', PATH))}"
    conn.writer.write(f"POST {url} HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n40".encode())
    assert await conn.closed()  # after body_timeout (0.5 s), without an answer
    idle = await Conn.open(node.port)
    await idle.request("GET", PATH)
    assert await idle.closed()  # after keepalive_timeout (1 s) with no next request


@pytest.mark.asyncio
async def test_stop_closes_keep_alive_connections(node: RunningNode) -> None:
    """Connections between requests are closed when the node stops, as Tornado closes its own."""
    conn = await Conn.open(node.port)
    url = f"{PATH}&sid={_sid(await conn.request('GET', PATH))}"
    idle = await Conn.open(node.port)
    await idle.request("GET", PATH)
    conn.send("GET", url)  # held until the node stops
    await asyncio.sleep(0.05)
    stopping = asyncio.ensure_future(node.stop())
    if node.node.front_door:  # the held poll gets its answer (NOOP), then the connection closes
        assert (await conn.answer()).startswith(b"HTTP/1.1 200 ")
    # (Tornado may close the connection before its handler resumes: no answer, a client reconnects either way)
    await asyncio.wait_for(conn.reader.read(), 5)
    assert await idle.closed()
    await stopping



@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "=", "&", ";", "EIO", "4", "é", "%41", "%zz", "+", "%C3%A9"]),
                max_size=12))
def test_query_is_read_as_tornado_reads_it(parts: list[str]) -> None:
    """The fast path's query parser (split by hand when nothing is escaped) agrees with Tornado's."""
    text = "".join(parts)
    expected = {k: v[-1].decode("utf-8", "replace") for k, v in parse_qs_bytes(text, keep_blank_values=True).items()}
    assert parse_query(text) == expected


@pytest.mark.asyncio
async def test_drain_answers_the_held_poll_and_lets_the_client_fetch_the_rest() -> None:
    """SIGTERM's drain: the held GET gets its last packets at once, and the drain does not wait
    out the fetch deadline."""
    sock, port = bind_unused_port()
    node = CoupNode(settings_for_tests(recovery_window=0.0, drain_spread=0.05, drain_timeout=5.0))
    await node.start([sock])
    running = RunningNode(node, port)
    try:
        conn = await Conn.open(port)
        sid = _sid(await conn.request("GET", PATH))
        url = f"{PATH}&sid={sid}"
        assert (await conn.request("POST", url, b"40")).endswith(b"ok")
        assert b'\r\n\r\n40{"sid":' in await conn.request("GET", url)
        conn.send("GET", url)  # held
        await eventually(lambda: node.engine.sessions[sid].transport.waiting, "the GET is held")  # type: ignore[attr-defined]
        draining = asyncio.ensure_future(node.drain())
        answer = await conn.answer()
        assert answer.startswith(b"HTTP/1.1 200 ")
        # NOOP on shutdown: the client's next poll fails and it reconnects (elsewhere)
        assert answer.split(b"\r\n\r\n", 1)[1].split(b"\x1e")[-1] == b"6"
        took = await asyncio.wait_for(draining, 5)
        assert took < 1.5 and not node.engine.sessions  # fetched: the drain did not wait for the deadline
        assert _tornado_connections(node) == 0
        conn.close()
    finally:
        await running.stop()
