"""The front door's idle keep-alive close never drops a request the client has begun to send
(coup/transports/front_door.py `FrontDoorProtocol._timed_out`, `_next`).

HTTP/1.1 lets a server close an idle keep-alive connection, and a client resends only
idempotent requests when a reused connection fails: a long-polling POST lost that way is
lost packets (python-engineio ends its write loop; socket.io-client closes the transport).
The front door did it two ways:

- its deadline fired, on a loaded loop, after a request had arrived but before the loop read
  it (timers run late, and a turn's reads only cover bytes in before that turn's select): it
  closed with the request unread, and the client got a reset;
- a request that began just before the idle deadline kept that deadline for its head and
  got a 408 (Node gives a request head its own time from its first byte, nodejs/node#13549).

The timing is driven, not waited for: the node runs on `SteppedLoop`, whose clock the test
moves on, and the request's bytes reach the kernel at the place in the loop's turn where the
deadline and the read meet.
"""

from __future__ import annotations

import asyncio
import select
from collections.abc import Awaitable, Callable

import pytest
from tornado.testing import bind_unused_port

from coup.app import CoupNode
from coup.transports.front_door import FrontDoorProtocol
from tests.conftest import test_settings as settings_for_tests
from tests.transports.test_front_door_polling import PATH, Conn, _sid
from tests.waiting import TIMEOUT, eventually

pytestmark = pytest.mark.timeout(30)

HEAD_TIMEOUT = 10.0


class SteppedLoop(asyncio.SelectorEventLoop):
    """A loop whose clock (what its timers are due by) the test moves on with `step`."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = 0.0

    def time(self) -> float:
        return super().time() + self.offset

    def step(self, seconds: float) -> None:
        self.offset += seconds


def on_stepped_loop(scenario: Callable[[SteppedLoop, CoupNode, int], Awaitable[None]], *,
                    keepalive_timeout: float = HEAD_TIMEOUT) -> None:
    """Run `scenario` with a front-door node (HEAD_TIMEOUT) on a `SteppedLoop`."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, SteppedLoop)
        sock, port = bind_unused_port()
        node = CoupNode(settings_for_tests(recovery_window=0.0, head_timeout=HEAD_TIMEOUT, body_timeout=HEAD_TIMEOUT,
                                           keepalive_timeout=keepalive_timeout))
        await node.start([sock])
        try:
            await scenario(loop, node, port)
        finally:
            await node.stop()

    with asyncio.Runner(loop_factory=SteppedLoop) as runner:
        runner.run(main())


def the_connection(node: CoupNode) -> FrontDoorProtocol:
    door = node._front_door
    assert door is not None and len(door.connections) == 1, "one client connection on the front door"
    return next(iter(door.connections))


def server_fd(connection: FrontDoorProtocol) -> int:
    transport = connection._transport
    assert transport is not None
    return int(transport.get_extra_info("socket").fileno())


def arrives_as_the_deadline_fires(loop: SteppedLoop, fd: int, send: Callable[[], None]) -> None:
    """The connection's deadline is due in the loop's next turn, and `send`'s bytes reach the
    server's socket in that turn after its select and before its timers: in, unread, when
    the deadline fires."""

    def arrive() -> None:
        send()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        assert poller.poll(TIMEOUT * 1000), "the request reached the server's socket"  # blocks the loop

    loop.call_soon(arrive)  # first in the next turn's callbacks, before the timers due in it
    loop.step(HEAD_TIMEOUT + 1)


def test_a_request_in_when_the_idle_deadline_fires_is_answered() -> None:
    async def scenario(loop: SteppedLoop, node: CoupNode, port: int) -> None:
        conn = await Conn.open(port)
        url = f"{PATH}&sid={_sid(await conn.request('GET', PATH))}"
        assert (await conn.request("POST", url, b"40")).endswith(b"\r\n\r\nok")
        assert b'40{"sid":' in await conn.request("GET", url)  # the connection is idle now
        # a pong: the session takes it in (`receive_payload`) before the POST is answered
        arrives_as_the_deadline_fires(loop, server_fd(the_connection(node)), lambda: conn.send("POST", url, b"3"))
        assert (await conn.answer()).endswith(b"\r\n\r\nok")  # not a reset: the POST was read and served
        assert (await conn.request("POST", url, b"3")).endswith(b"\r\n\r\nok")  # on the same connection
        conn.close()

    on_stepped_loop(scenario)


def test_a_request_begun_before_the_idle_deadline_gets_the_whole_head_timeout() -> None:
    async def scenario(loop: SteppedLoop, node: CoupNode, port: int) -> None:
        conn = await Conn.open(port)
        opened = await conn.request("GET", PATH)
        url = f"{PATH}&sid={_sid(opened)}"
        connection = the_connection(node)
        loop.step(HEAD_TIMEOUT - 1)  # idle for most of its time, then a request begins
        conn.writer.write(f"POST {url} HTTP/1.1\r\n".encode())
        await eventually(lambda: bool(connection._buffer), "the head's first line read")
        loop.step(2)  # past the idle deadline, within the head's own time
        await asyncio.sleep(0.01)  # a timer later than the deadline: the deadline's check ran first
        conn.writer.write(b"Host: 127.0.0.1\r\nContent-Length: 2\r\n\r\n40")
        assert (await conn.answer()).endswith(b"\r\n\r\nok")
        # the head's own time still bounds it: a head that does not end gets its 408
        conn.writer.write(f"GET {url} HTTP/1.1\r\n".encode())
        await eventually(lambda: bool(connection._buffer), "the next head's first line read")
        loop.step(HEAD_TIMEOUT + 1)
        assert (await conn.answer()).startswith(b"HTTP/1.1 408 ")
        assert await conn.closed()

    on_stepped_loop(scenario)


def test_an_idle_connection_lasts_the_keepalive_timeout_not_the_head_timeout() -> None:
    """Behind a router that keeps its connections to the app (AWS ALB, Heroku Router 2.0), the
    app must not close an idle one before the router does, or the router may send a request on
    it as it closes and answer that request 502: `COUP_KEEPALIVE_TIMEOUT` is set above the
    router's idle timeout, while a request head keeps its own `COUP_HEAD_TIMEOUT`."""
    keepalive = 6 * HEAD_TIMEOUT

    async def scenario(loop: SteppedLoop, node: CoupNode, port: int) -> None:
        conn = await Conn.open(port)
        assert b'"sid":' in await conn.request("GET", PATH)
        connection = the_connection(node)
        loop.step(keepalive - 1)  # idle for far longer than a head may take (and the session's pings)
        await asyncio.sleep(0.05)
        assert b'"sid":' in await conn.request("GET", PATH)  # still open, and served
        # a head begun after a long idle has its own HEAD_TIMEOUT, not what is left of the idle time
        loop.step(keepalive - 1)
        conn.writer.write(f"GET {PATH} HTTP/1.1\r\n".encode())
        await eventually(lambda: bool(connection._buffer), "the head's first line read")
        loop.step(HEAD_TIMEOUT + 1)
        assert (await conn.answer()).startswith(b"HTTP/1.1 408 ")
        assert await conn.closed()
        # the same on a connection handed on to Tornado (not a polling request)
        tornado = await Conn.open(port)
        assert (await tornado.request("GET", "/healthz")).startswith(b"HTTP/1.1 200 ")
        loop.step(keepalive - 1)
        await asyncio.sleep(0.05)
        assert (await tornado.request("GET", "/healthz")).startswith(b"HTTP/1.1 200 ")
        tornado.close()
        # and an idle connection is closed, without a word, once its keep-alive time is over
        idle = await Conn.open(port)
        assert b'"sid":' in await idle.request("GET", PATH)
        await eventually(lambda: len(node._front_door.connections) == 1, "the idle connection on the door")
        loop.step(keepalive + 1)
        assert await idle.closed()

    on_stepped_loop(scenario, keepalive_timeout=keepalive)
