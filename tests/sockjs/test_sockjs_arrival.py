"""Two receiving polls on one session are served in the order the server read them.

The protocol suite (Protocol.test_simpleSession, HandlingClose.test_abort_xhr_polling)
sends a poll for a session on one connection and, right after, a second poll on another:
the second must get ``c[2010,"Another connection still open"]`` and the first must wait.
Tornado brings a request whose bytes come in on a readable event to its handler one loop
turn later (its header read is wrapped in a timeout) than one whose bytes are already
there when its connection is first read, so the second poll attached first whenever the
first connection had been accepted before its bytes arrived (about 1 suite run in 4).
Each test sends both polls while the event loop cannot run, so the server reads them in
one batch, in order: before `coup.transports.arrival`, the second poll was attached every
time on the test services, and behind the front door whenever its connection was
already open.
"""

from __future__ import annotations

import asyncio
import http.client
import socket
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from tornado.testing import bind_unused_port

from tests.conftest import RunningNode
from tests.sockjs.conformance_server import build_routers, build_server

ANOTHER = b'c[2010,"Another connection still open"]\n'
#: an answer that is due comes in well under this; a poll that was attached waits 25 s
ANSWER_TIMEOUT = 1.0
ATTEMPTS = 50


def send_poll(sock: socket.socket, path: str) -> None:
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n".encode())


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT)


def answer(sock: socket.socket) -> bytes:
    """The body of the next answer on `sock`; b"" if none came (the poll was attached)."""
    response = http.client.HTTPResponse(sock)
    try:
        response.begin()
        return response.read()
    except TimeoutError:
        return b""
    finally:
        response.close()


def status(sock: socket.socket) -> int:
    response = http.client.HTTPResponse(sock)
    try:
        response.begin()
        return response.status
    finally:
        response.close()


def assert_second_polls_refused(answers: list[bytes]) -> None:
    attached = len(answers) - answers.count(ANOTHER)
    assert attached == 0, f"{attached} of {len(answers)} second polls were attached instead of refused"


async def race(port: int, prefix: str, *, keep_alive: bool = False, preconnect: bool = False,
               echo: bool = False) -> bytes:
    """Open a session, then send poll 1 and poll 2 in one go; poll 2's answer.

    `keep_alive`: poll 1 goes on the connection that opened the session; `preconnect`:
    poll 2's connection is open (and idle) before poll 1 is sent; `echo` (an echo
    service): poll 1, if poll 2 was refused, is the session's receiver and gets a message.
    """
    path = f"{prefix}/000/{uuid.uuid4()}/xhr"
    opener = connect(port)
    sockets = [opener]
    try:
        send_poll(opener, path)
        assert await asyncio.to_thread(answer, opener) == b"o\n"
        second = connect(port) if preconnect else None
        first = opener if keep_alive else connect(port)
        sockets += [first] + ([second] if second is not None else [])
        # the subject (nothing to observe from here): the server accepts the connections and finds nothing to read
        await asyncio.sleep(0.02)
        # From here to the read the loop does not run: the server sees both polls at once.
        send_poll(first, path)
        if second is None:
            second = connect(port)
            sockets.append(second)
        send_poll(second, path)
        refused = await asyncio.to_thread(answer, second)
        if echo and refused == ANOTHER:
            with connect(port) as sender:
                sender.sendall(f"POST {path}_send HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                               "Content-Length: 5\r\n\r\n[\"x\"]".encode())
                assert await asyncio.to_thread(status, sender) == 204
            assert await asyncio.to_thread(answer, first) == b'a["x"]\n'
        return refused
    finally:
        for sock in sockets:
            sock.close()


@pytest_asyncio.fixture
async def services_port() -> AsyncIterator[int]:
    """The SockJS test services, built as tests/sockjs/conformance_server.py builds them."""
    routers = build_routers()
    server = build_server(routers)
    sock, port = bind_unused_port()
    server.add_sockets([sock])
    try:
        yield port
    finally:
        server.stop()
        for router in routers:
            router.close()
        await server.close_all_connections()


@pytest.mark.asyncio
@pytest.mark.parametrize("keep_alive", [False, True], ids=["new-connection", "keep-alive"])
async def test_the_poll_read_first_waits(services_port: int, keep_alive: bool) -> None:
    answers = [await race(services_port, "/echo", keep_alive=keep_alive, echo=True) for _ in range(ATTEMPTS)]
    assert_second_polls_refused(answers)


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", ["new-connection", "keep-alive", "preconnected"])
async def test_the_poll_read_first_waits_behind_the_front_door(node: RunningNode, mode: str) -> None:
    """The same on a node (`coup serve`): connections come in through the front door."""
    answers = [await race(node.port, "/sockjs", keep_alive=mode != "new-connection",
                          preconnect=mode == "preconnected") for _ in range(ATTEMPTS)]
    assert_second_polls_refused(answers)
