"""A poll whose client hangs up as it is sent ends at once, also on a connection Tornado serves.

Behind a proxy a browser tab that closes while it polls becomes a request followed at once by
the close of the proxy's connection to the node (HAProxy's `abortonclose`, nginx by default).
Tornado tells a handler its client left only if the connection closes while the handler
waits; request and close read together said nothing, so the SockJS session kept that poll as
its handler and never expired: the user stayed online (the demo test behind HAProxy failed
that way, 1 run in ~16). The front door serves such polls itself, but a connection it handed
on to Tornado (after any API request) stays Tornado's, and a proxy reuses its connections
for every client.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from tornado.ioloop import IOLoop

from tests.conftest import RunningNode
from tests.transports.test_front_door_polling import Conn
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(30)

#: well under SockJS's disconnect delay (5 s): the session must end because the poll ended
PROMPTLY = 2.0


def hang_up_after(conn: Conn, method: str, target: str) -> None:
    """The request and the close in one go: both are in before the node reads either."""
    conn.send(method, target)
    conn.close()


@asynccontextmanager
async def connection(node: RunningNode, served_by: str) -> AsyncIterator[Conn]:
    conn = await Conn.open(node.port)
    if served_by == "tornado":  # any request the front door does not serve hands the connection on
        assert (await conn.request("GET", "/healthz")).startswith(b"HTTP/1.1 200 ")
    try:
        yield conn
    finally:
        conn.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("transport", ["xhr", "xhr_streaming"])
@pytest.mark.parametrize("served_by", ["front door", "tornado"])
async def test_a_sockjs_poll_hung_up_as_it_is_sent_ends_its_session(
        node: RunningNode, served_by: str, transport: str) -> None:
    sessions = node.node.engine.sessions
    async with connection(node, "front door") as opener:
        assert (await opener.request("POST", "/sockjs/000/hungup01/xhr")).endswith(b"\r\n\r\no\n")
    await eventually(lambda: len(sessions) == 1, "the SockJS session open")
    async with connection(node, served_by) as http:
        hang_up_after(http, "POST", f"/sockjs/000/hungup01/{transport}")
        await eventually(lambda: not sessions, "the session ended", timeout=PROMPTLY)


@pytest.mark.asyncio
async def test_an_engineio_poll_hung_up_as_it_is_sent_does_not_wait(node: RunningNode) -> None:
    """Had it waited, the client's next poll would find one still waiting: "overlap from
    client", and the reference's answer to that is the end of the session."""
    async with connection(node, "front door") as opener:
        opened = await opener.request("GET", "/socket.io/?EIO=4&transport=polling")
        sid = json.loads(opened.split(b"\r\n\r\n", 1)[1][1:])["sid"]
    path = f"/socket.io/?EIO=4&transport=polling&sid={sid}"
    async with connection(node, "tornado") as http:
        hang_up_after(http, "GET", path)
        await asyncio.sleep(0.2)  # the node has read both and run the handler
    async with connection(node, "front door") as next_poll:
        next_poll.send("GET", path)
        await asyncio.sleep(0.2)
        assert sid in node.node.engine.sessions and node.node.engine.sessions[sid].open


@pytest.mark.asyncio
async def test_a_sockjs_poll_whose_reset_went_unreported_ends_at_the_next_expiry_check(node: RunningNode) -> None:
    """Behind HAProxy the loop once never reported the reset of a connection the front door
    had handed on to Tornado (the demo test, 1 run in ~16): the poll held the session, and its
    user stayed online, until the next heartbeat (25 s). Here the loop stops watching the
    poll's socket before its client resets it; the session's expiry check (every 5 s while a
    request holds it) asks the socket itself."""
    sessions = node.node.engine.sessions
    assert node.node.sockjs is not None
    router = node.node.sockjs.router
    async with connection(node, "tornado") as http:
        assert (await http.request("POST", "/sockjs/000/missed01/xhr")).endswith(b"\r\n\r\no\n")
        http.send("POST", "/sockjs/000/missed01/xhr")  # this poll holds the session
        session = router.get_session("missed01")
        await eventually(lambda: session.handler is not None, "the poll holding the session")
        stream = session.handler.request.connection.stream
        IOLoop.current().remove_handler(stream.socket.fileno())  # what the loop failed to do: watch it
        raw = http.writer.get_extra_info("socket")
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        http.writer.transport.abort()  # a reset
        await eventually(lambda: not sessions, "the session ended", timeout=5 + 1 + 2)
