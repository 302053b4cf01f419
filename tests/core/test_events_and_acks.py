"""Event handlers, acknowledgements both ways, middleware, connect timeout, flood control."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from coup.core.errors import AckTimeout, ClientError, ConnectRefused, SocketDisconnected
from coup.core.options import ServerOptions
from coup.core.socket import Socket
from coup.engine.options import EngineOptions
from coup.protocol.socketio import SocketPacket, SocketPacketType
from tests.servers import RunningServer, serve
from tests.sioclient import SioClient, sio_connect
from tests.waiting import eventually

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]

T = SocketPacketType


@pytest_asyncio.fixture
async def server() -> AsyncIterator[RunningServer]:
    async with serve(server_options=ServerOptions(max_pending_events=20)) as running:
        yield running


async def ack_of(client: SioClient, ack_id: int) -> list[Any]:
    """Skip other packets until the ACK with `ack_id`; return its data."""
    while True:
        packet = await client.packet()
        if packet.type in (T.ACK, T.BINARY_ACK) and packet.id == ack_id:
            return list(packet.data)


# ---------------------------------------------------------------------------- ordering


async def test_one_sockets_events_run_one_at_a_time_in_arrival_order(server: RunningServer) -> None:
    seen: list[int] = []
    running = 0

    async def slow(socket: Socket, args: list[Any]) -> int:
        nonlocal running
        running += 1
        assert running == 1, "two handlers of one socket ran at once"
        await asyncio.sleep(0.002 * (10 - args[0] % 10))  # later events finish faster if run in parallel
        seen.append(args[0])
        running -= 1
        return int(args[0])

    def quick(socket: Socket, args: list[Any]) -> int:
        seen.append(args[0])
        return int(args[0])

    server.sio.main.on("slow", slow)
    server.sio.main.on("quick", quick)
    client = await sio_connect(server)
    for i in range(20):
        client.emit("slow" if i % 3 else "quick", i, ack=i)
    acks = [(await ack_of(client, i))[0] for i in range(20)]
    assert seen == list(range(20))
    assert acks == list(range(20))
    await client.close()


async def test_two_sockets_are_handled_concurrently(server: RunningServer) -> None:
    gate = asyncio.Event()

    async def wait(socket: Socket, args: list[Any]) -> str:
        await gate.wait()
        return "released"

    def release(socket: Socket, args: list[Any]) -> str:
        gate.set()
        return "ok"

    server.sio.main.on("wait", wait)
    server.sio.main.on("release", release)
    a, b = await sio_connect(server), await sio_connect(server)
    a.emit("wait", ack=1)
    b.emit("release", ack=2)
    assert await ack_of(b, 2) == ["ok"]
    assert await ack_of(a, 1) == ["released"]
    await a.close()
    await b.close()


# ---------------------------------------------------------------------------- acks: client -> server


@pytest.mark.parametrize(("result", "ack"), [
    (None, []),
    ("one", ["one"]),
    (("a", 2, {"c": None}), ["a", 2, {"c": None}]),
    ([1, 2], [[1, 2]]),
    (b"\x00\xff", [b"\x00\xff"]),
])
async def test_handler_return_value_is_the_ack(server: RunningServer, result: Any, ack: list[Any]) -> None:
    server.sio.main.on("ask", lambda socket, args: result)
    client = await sio_connect(server)
    client.emit("ask", ack=7)
    packet = await client.packet()
    assert packet.id == 7 and list(packet.data) == ack
    assert packet.type is (T.BINARY_ACK if isinstance(result, bytes) else T.ACK)
    await client.close()


async def test_async_handler_ack_and_no_ack_when_not_asked(server: RunningServer) -> None:
    async def double(socket: Socket, args: list[Any]) -> int:
        await asyncio.sleep(0)
        return int(args[0]) * 2

    server.sio.main.on("double", double)
    client = await sio_connect(server)
    client.emit("double", 4)          # no ack id: nothing comes back
    client.emit("double", 21, ack=3)
    packet = await client.packet()
    assert (packet.type, packet.id, packet.data) == (T.ACK, 3, [42])
    await client.close()


async def test_client_error_gives_error_event_and_failed_ack(server: RunningServer) -> None:
    def refuse(socket: Socket, args: list[Any]) -> None:
        raise ClientError("FORBIDDEN", "not a member of this study", {"study": 3})

    server.sio.main.on("post", refuse)
    client = await sio_connect(server)
    client.emit("post", "hi", ack=9)
    assert await client.event() == ["error", {"message": "not a member of this study", "code": "FORBIDDEN",
                                              "event": "post", "study": 3}]
    # the error's data travels in the ack too: `retryable: true` is how a client knows to send again
    assert await ack_of(client, 9) == [{"ok": False, "error": {"code": "FORBIDDEN", "study": 3,
                                                               "message": "not a member of this study"}}]
    client.emit("post", "still connected", ack=10)
    assert (await ack_of(client, 10))[0]["ok"] is False
    await client.close()


async def test_handler_crash_is_logged_and_reported_without_its_text(server: RunningServer,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    async def crash(socket: Socket, args: list[Any]) -> None:
        raise RuntimeError("secret database password in this message")

    server.sio.main.on("crash", crash)
    client = await sio_connect(server)
    with caplog.at_level(logging.ERROR, logger="coup"):
        client.emit("crash", ack=1)
        event = await client.event()
        ack = await ack_of(client, 1)
    assert event == ["error", {"message": "Internal server error", "code": "INTERNAL", "event": "crash"}]
    assert ack == [{"ok": False, "error": {"code": "INTERNAL", "message": "Internal server error"}}]
    assert "secret database password" in caplog.text  # in our log, with its traceback...
    assert "Traceback" in caplog.text
    client.emit("crash")  # ...never on the wire, and the socket keeps working
    assert (await client.event())[1]["code"] == "INTERNAL"
    await client.close()


async def test_unhandled_events_go_to_the_fallback(server: RunningServer) -> None:
    got: list[list[Any]] = []
    server.sio.main.on_unhandled(lambda socket, args: got.append(args) or "fallback")
    client = await sio_connect(server)
    client.emit("anything", 1, ack=5)
    assert await ack_of(client, 5) == ["fallback"]
    assert got == [["anything", 1]]
    await client.close()


# ---------------------------------------------------------------------------- acks: server -> client


async def test_emit_with_ack_to_a_client(server: RunningServer) -> None:
    results: list[Any] = []

    async def on_connect(socket: Socket) -> None:
        results.append(await socket.emit_with_ack("question", "6x7", timeout=2))

    server.sio.main.on_connect(on_connect)
    client = await sio_connect(server)
    packet = await client.packet()
    assert packet.type is T.EVENT and packet.data == ["question", "6x7"] and packet.id is not None
    client.ack(packet.id, 42, "sure")
    await eventually(lambda: results == [[42, "sure"]], "the ack reached emit_with_ack")
    await client.close()


async def test_emit_with_ack_times_out(server: RunningServer) -> None:
    outcome: list[Any] = []

    async def on_connect(socket: Socket) -> None:
        try:
            await socket.emit_with_ack("question", timeout=0.1)
        except AckTimeout as exc:
            outcome.append(exc)
        socket.emit("after-timeout")

    server.sio.main.on_connect(on_connect)
    client = await sio_connect(server)
    packet = await client.packet()
    assert packet.id is not None
    assert await client.event() == ["after-timeout"]
    assert len(outcome) == 1 and isinstance(outcome[0], AckTimeout)
    server.sio.main.on("ping-after", lambda socket, args: "pong")
    client.ack(packet.id, "too late")  # a late ack is ignored, not an error
    client.emit("ping-after", ack=9)  # answered after the late ack was handled: the session lives on
    reply = await client.packet()
    assert reply.type is T.ACK and reply.id == 9 and reply.data == ["pong"]
    assert client.engine_sid in server.engine.sessions
    await client.close()


async def test_emit_with_ack_fails_when_the_client_disconnects(server: RunningServer) -> None:
    outcome: list[BaseException] = []

    async def on_connect(socket: Socket) -> None:
        try:
            await socket.emit_with_ack("question", timeout=5)
        except SocketDisconnected as exc:
            outcome.append(exc)

    server.sio.main.on_connect(on_connect)
    client = await sio_connect(server)
    await client.packet()
    await client.close()
    await eventually(lambda: outcome, "emit_with_ack failed with SocketDisconnected")
    assert len(outcome) == 1


async def test_broadcast_with_ack_collects_every_answer(server: RunningServer) -> None:
    clients = [await sio_connect(server) for _ in range(3)]
    task = asyncio.create_task(server.sio.main.local.timeout(2).emit_with_ack("vote", "q1"))
    for i, client in enumerate(clients):
        packet = await client.packet()
        assert packet.data == ["vote", "q1"]
        client.ack(packet.id or 0, f"answer-{i}")
    assert sorted(await task) == ["answer-0", "answer-1", "answer-2"]
    for client in clients:
        await client.close()


async def test_broadcast_with_ack_timeout_keeps_the_answers_that_came(server: RunningServer) -> None:
    clients = [await sio_connect(server) for _ in range(3)]
    task = asyncio.create_task(server.sio.main.local.timeout(0.2).emit_with_ack("vote"))
    for i, client in enumerate(clients):
        packet = await client.packet()
        if i != 1:  # the second client stays silent
            client.ack(packet.id or 0, i)
    with pytest.raises(AckTimeout) as info:
        await task
    assert sorted(info.value.responses) == [0, 2]
    for client in clients:
        await client.close()


# ---------------------------------------------------------------------------- middleware


async def test_middleware_sees_auth_and_can_refuse(server: RunningServer) -> None:
    async def check(socket: Socket, auth: dict[str, Any]) -> None:
        if auth.get("token") != "good":
            raise ConnectRefused("invalid token", {"retry": False})
        socket.data["user"] = "alice"

    server.sio.main.use(check)
    server.sio.main.on("whoami", lambda socket, args: socket.data["user"])
    refused = await SioClient.open(await server.websocket())
    refused.send(SocketPacket(T.CONNECT, "/",
                                                                                           {"token": "bad"}))
    packet = await refused.packet()
    assert (packet.type, packet.data) == (T.CONNECT_ERROR, {"message": "invalid token", "data": {"retry": False}})
    client = await sio_connect(server, auth={"token": "good"})
    client.emit("whoami", ack=1)
    assert await ack_of(client, 1) == ["alice"]
    await client.close()
    await refused.close()


async def test_middleware_crash_is_an_internal_connect_error(server: RunningServer,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    async def broken(socket: Socket, auth: dict[str, Any]) -> None:
        raise KeyError("oops")

    server.sio.of("/broken").use(broken)
    client = await SioClient.open(await server.websocket())
    with caplog.at_level(logging.ERROR, logger="coup"):
        client.send(SocketPacket(T.CONNECT,
                                                                                              "/broken"))
        packet = await client.packet()
    assert (packet.type, packet.namespace, packet.data) == (T.CONNECT_ERROR, "/broken",
                                                            {"message": "Internal server error"})
    assert "oops" in caplog.text
    await client.close()


# ---------------------------------------------------------------------------- connect timeout, floods


async def test_connect_timeout_drops_a_client_that_joins_no_namespace(caplog: pytest.LogCaptureFixture) -> None:
    async with serve(EngineOptions(ping_interval=0.1, ping_timeout=5),
                     ServerOptions(connect_timeout=0.3)) as server:
        idle = await SioClient.open(await server.websocket())
        joined = await sio_connect(server)
        with caplog.at_level(logging.INFO, logger="coup"):
            await idle.closed(timeout=2)  # answers pings all along: only the connect timeout ends it
        assert "no namespace connected" in caplog.text and idle.engine_sid in caplog.text
        await asyncio.sleep(0.1)  # the subject: past joined's own connect deadline, it is still there
        assert joined.engine_sid in server.engine.sessions
        joined.send(SocketPacket(T.DISCONNECT))
        await asyncio.sleep(0.4)  # the subject: past the connect timeout, left every namespace after joining one:
        # kept, as the reference does
        assert joined.engine_sid in server.engine.sessions
        await idle.close()
        await joined.close()


async def test_a_flooding_socket_is_disconnected(server: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    gate = asyncio.Event()

    async def blocked(socket: Socket, args: list[Any]) -> None:
        await gate.wait()

    server.sio.main.on("work", blocked)
    other = await sio_connect(server)
    flooder = await sio_connect(server)
    with caplog.at_level(logging.WARNING, logger="coup"):
        for i in range(30):
            flooder.emit("work", i)
        event = await flooder.event()
        assert event[0] == "error" and event[1]["code"] == "FLOOD"
        await flooder.closed()
    assert "flood" in caplog.text
    gate.set()
    other.emit("work", 1, ack=1)
    reply = await other.packet()  # served: the flood of another socket did not touch it
    assert reply.type is T.ACK and reply.id == 1
    assert other.engine_sid in server.engine.sessions
    await other.close()
    await flooder.close()
