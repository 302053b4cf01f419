"""Disconnect reasons, server-side disconnects (also over polling), and connection state recovery."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from coup.core.options import RecoveryOptions, ServerOptions
from coup.core.socket import Socket
from coup.engine.options import EngineOptions
from coup.protocol.socketio import SocketPacket, SocketPacketType
from tests.servers import POLLING_PATH, RunningServer, serve
from tests.sioclient import SioClient, sio_connect
from tests.waiting import eventually

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]

T = SocketPacketType


class Reasons:
    """Records (namespace, socket id, reason) from every namespace's disconnect handler."""

    def __init__(self, server: RunningServer, *namespaces: str) -> None:
        self.seen: list[tuple[str, str, str]] = []
        for name in namespaces:
            server.sio.of(name).on_disconnect(self._record)

    async def _record(self, socket: Socket, reason: str) -> None:
        self.seen.append((socket.nsp.name, socket.id, reason))

    async def wait(self, count: int) -> list[str]:
        await eventually(lambda: len(self.seen) >= count)
        return [reason for _, _, reason in self.seen]


@pytest_asyncio.fixture
async def server() -> AsyncIterator[RunningServer]:
    async with serve(EngineOptions(ping_interval=0.2, ping_timeout=0.2)) as running:
        running.sio.of("/admin")
        yield running


# ---------------------------------------------------------------------------- reasons


async def test_client_namespace_disconnect(server: RunningServer) -> None:
    reasons = Reasons(server, "/")
    client = await sio_connect(server)
    client.send(SocketPacket(T.DISCONNECT))
    assert await reasons.wait(1) == ["client namespace disconnect"]
    assert client.engine_sid in server.engine.sessions  # the connection itself stays
    await client.close()


async def test_server_namespace_disconnect(server: RunningServer) -> None:
    reasons = Reasons(server, "/")
    client = await sio_connect(server)
    socket = next(iter(server.sio.main.sockets.values()))
    socket.disconnect()
    packet = await client.packet()
    assert (packet.type, packet.namespace) == (T.DISCONNECT, "/")
    assert await reasons.wait(1) == ["server namespace disconnect"]
    assert client.engine_sid in server.engine.sessions
    await client.connect("/")  # and the client may come back on the same connection
    await client.close()


async def test_server_disconnect_with_close_ends_every_namespace_then_the_connection(server: RunningServer) -> None:
    reasons = Reasons(server, "/", "/admin")
    client = await sio_connect(server)
    await client.connect("/admin")
    next(iter(server.sio.main.sockets.values())).disconnect(close=True)
    got = [await client.packet(), await client.packet()]
    assert sorted((p.type, p.namespace) for p in got) == [(T.DISCONNECT, "/"), (T.DISCONNECT, "/admin")]
    assert await client.closed() == 1000
    assert await reasons.wait(2) == ["server namespace disconnect"] * 2
    assert client.engine_sid not in server.engine.sessions


@pytest.mark.parametrize(("how", "reason"), [
    ("tcp close", "transport close"),
    ("engine close packet", "transport close"),
    ("no pong", "ping timeout"),
    ("malformed packet", "parse error"),
])
async def test_transport_level_reasons(server: RunningServer, how: str, reason: str) -> None:
    reasons = Reasons(server, "/", "/admin")
    client = await sio_connect(server)
    await client.connect("/admin")
    if how == "tcp close":
        await client.close()
    elif how == "engine close packet":
        client.ws.send_text("1")
    elif how == "malformed packet":
        client.ws.send_text("4{")
    # "no pong": just stop reading; the 0.2 s + 0.2 s heartbeat gives up
    assert await reasons.wait(2) == [reason, reason]
    await client.close()


async def test_server_shutdown_reason() -> None:
    async with serve() as server:
        reasons = Reasons(server, "/")
        client = await sio_connect(server)
        await server.sio.close()
        assert await reasons.wait(1) == ["server shutting down"]
        await client.close()


async def test_server_disconnect_reaches_a_polling_client_at_once_and_on_its_next_get() -> None:
    async with serve() as server, aiohttp.ClientSession() as http:
        async def open_connected() -> str:
            async with http.get(server.url + POLLING_PATH) as resp:
                sid: str = json.loads((await resp.text())[1:])["sid"]
            async with http.post(f"{server.url}{POLLING_PATH}&sid={sid}", data="40"):
                pass
            async with http.get(f"{server.url}{POLLING_PATH}&sid={sid}") as resp:
                assert (await resp.text()).startswith("40{")
            return sid

        # a GET is waiting when the server disconnects: it is answered at once
        sid = await open_connected()
        pending = asyncio.create_task(http.get(f"{server.url}{POLLING_PATH}&sid={sid}"))
        session = server.engine.sessions[sid]
        await eventually(lambda: getattr(session.transport, "waiting", False), "the GET waits at the server")
        next(iter(server.sio.main.sockets.values())).disconnect(close=True)
        async with asyncio.timeout(1):
            resp = await pending
        assert await resp.text() == "41\x1e1"
        resp.release()

        # no GET is waiting: the next one still gets the DISCONNECT and the CLOSE
        sid = await open_connected()
        next(iter(server.sio.main.sockets.values())).disconnect(close=True)
        async with http.get(f"{server.url}{POLLING_PATH}&sid={sid}") as resp:
            assert resp.status == 200
            assert await resp.text() == "41\x1e1"
        await eventually(lambda: sid not in server.engine.sessions, "the closed session is gone")
        async with http.get(f"{server.url}{POLLING_PATH}&sid={sid}") as resp:
            assert resp.status == 400


# ---------------------------------------------------------------------------- connection state recovery


def recovering(window: float = 120.0, max_packets: int = 1000) -> ServerOptions:
    return ServerOptions(recovery=RecoveryOptions(max_disconnection_duration=window, max_packets=max_packets))


@pytest_asyncio.fixture
async def recovery_server() -> AsyncIterator[RunningServer]:
    async with serve(server_options=recovering()) as running:
        await_join(running)
        yield running


def await_join(running: RunningServer) -> None:
    async def join(socket: Socket, args: list[Any]) -> list[str]:
        await socket.join(*args)
        socket.data["joined"] = list(args)
        return sorted(socket.rooms)

    running.sio.main.on("join", join)
    running.sio.main.on("status", lambda socket, args: {"recovered": socket.recovered, "data": socket.data})


async def joined_client(server: RunningServer, *rooms: str) -> tuple[SioClient, dict[str, Any], str]:
    """A connected client in `rooms`; returns it, its CONNECT reply and the last offset it saw."""
    client = await sio_connect(server)
    client.emit("join", *rooms, ack=1)
    packet = await client.packet()
    assert packet.type is T.ACK
    socket_id = client.connected["/"]["sid"]
    server.sio.main.to(socket_id).emit("hello")
    event = await client.event()
    assert event[0] == "hello"
    return client, client.connected["/"], event[-1]


async def reconnect(server: RunningServer, auth: dict[str, Any]) -> tuple[SioClient, dict[str, Any]]:
    client = await SioClient.open(await server.websocket())
    return client, await client.connect("/", auth)


async def assert_fresh_start(client: SioClient) -> None:
    """Not recovered, and nothing replayed: the first packet is the answer to our question."""
    client.emit("status", ack=1)
    packet = await client.packet()
    assert packet.type is T.ACK and packet.data[0]["recovered"] is False
    await client.close()


async def drop(server: RunningServer, client: SioClient) -> None:
    """The transport goes away under the client (a recoverable 'transport close')."""
    socket_id = client.connected["/"]["sid"]
    await client.close()
    pid = client.connected["/"]["pid"]
    await eventually(lambda: socket_id not in server.sio.main.sockets, "the socket left")
    await eventually(lambda: pid in server.sio.main.adapter._store._sessions,  # type: ignore[attr-defined]
                     "the session record is stored (by a task)")


async def test_connect_reply_has_a_pid_and_events_carry_offsets(recovery_server: RunningServer) -> None:
    client, reply, offset = await joined_client(recovery_server, "r")
    assert set(reply) == {"sid", "pid"} and reply["pid"] != reply["sid"]
    assert offset.isdigit()
    recovery_server.sio.main.emit("all", 1)
    recovery_server.sio.main.to("r").emit("room", 2)
    next(iter(recovery_server.sio.main.sockets.values())).emit("direct", 3)
    offsets = []
    for name, value in (("all", 1), ("room", 2), ("direct", 3)):
        event = await client.event()
        assert event[:2] == [name, value]
        offsets.append(int(event[-1]))
    assert offsets == sorted(offsets) and len(set(offsets)) == 3
    client.emit("status", ack=9)  # acknowledgements carry no offset
    packet = await client.packet()
    assert packet.type is T.ACK and packet.data == [{"recovered": False, "data": {"joined": ["r"]}}]
    await client.close()


async def test_restore_after_a_transport_drop_replays_exactly_what_was_missed(recovery_server: RunningServer) -> None:
    nsp = recovery_server.sio.main
    client, reply, offset = await joined_client(recovery_server, "study:1")
    other, _, _ = await joined_client(recovery_server, "study:2")
    await drop(recovery_server, client)
    nsp.to("study:1").emit("missed-room", 1)
    nsp.emit("missed-all", 2)
    nsp.to("study:2").emit("not-for-me", 3)
    nsp.to("study:1").emit("missed-room", 4)

    back, new_reply = await reconnect(recovery_server, {"pid": reply["pid"], "offset": offset})
    assert new_reply == reply  # same socket id, same pid
    replayed = [await back.event() for _ in range(3)]
    assert [e[:2] for e in replayed] == [["missed-room", 1], ["missed-all", 2], ["missed-room", 4]]
    back.emit("status", ack=2)
    packet = await back.packet()
    assert packet.data == [{"recovered": True, "data": {"joined": ["study:1"]}}]
    nsp.to("study:1").emit("live", 5)  # its rooms came back with it
    assert (await back.event())[:2] == ["live", 5]
    await back.close()
    await other.close()


async def test_a_session_is_restored_once(recovery_server: RunningServer) -> None:
    client, reply, offset = await joined_client(recovery_server)
    await drop(recovery_server, client)
    first, first_reply = await reconnect(recovery_server, {"pid": reply["pid"], "offset": offset})
    assert first_reply["sid"] == reply["sid"]
    second, second_reply = await reconnect(recovery_server, {"pid": reply["pid"], "offset": offset})
    assert second_reply["sid"] != reply["sid"]
    await first.close()
    await second.close()


async def test_an_attempt_that_ends_during_the_middleware_leaves_the_session_to_the_next(
        recovery_server: RunningServer) -> None:
    nsp = recovery_server.sio.main
    client, reply, offset = await joined_client(recovery_server, "study:1")
    await drop(recovery_server, client)
    nsp.to("study:1").emit("missed", 1)
    in_middleware = asyncio.Event()
    hold = {"on": True}

    async def slow_check(socket: Socket, auth: Any) -> None:  # a token check that takes a while
        if hold["on"]:
            in_middleware.set()
            await eventually(lambda: socket.client.closed, "the client to give up")

    nsp.use(slow_check)
    first = await SioClient.open(await recovery_server.websocket())
    first.send(SocketPacket(T.CONNECT, "/", {"pid": reply["pid"], "offset": offset}))
    await asyncio.wait_for(in_middleware.wait(), 3)
    await first.close()  # the client gives up on this attempt (its node is draining, a timeout)
    await eventually(lambda: pid_stored(recovery_server, reply["pid"]), "the claimed session given back")
    hold["on"] = False

    back, new_reply = await reconnect(recovery_server, {"pid": reply["pid"], "offset": offset})
    assert new_reply == reply
    assert (await back.event())[:2] == ["missed", 1]
    await back.close()


def pid_stored(server: RunningServer, pid: str) -> bool:
    return pid in server.sio.main.adapter._store._sessions  # type: ignore[attr-defined]


@pytest.mark.parametrize("auth", [
    {"pid": "unknown", "offset": "1"},
    {"pid": None, "offset": "1"},
    {"offset": "1"},
    {"pid": "PID", "offset": "not-a-number"},
    {"pid": "PID", "offset": 1},
    {"pid": "PID"},
])
async def test_no_restore_for_bad_credentials(recovery_server: RunningServer, auth: dict[str, Any]) -> None:
    client, reply, _ = await joined_client(recovery_server, "r")
    await drop(recovery_server, client)
    recovery_server.sio.main.emit("while-away")
    if auth.get("pid") == "PID":
        auth = {**auth, "pid": reply["pid"]}
    back, new_reply = await reconnect(recovery_server, auth)
    assert new_reply["sid"] != reply["sid"]
    assert new_reply["pid"] != reply["pid"]
    await assert_fresh_start(back)


@pytest.mark.parametrize("missed", [2, 5], ids=["offset-in-buffer", "offset-left-buffer"])
async def test_replay_is_complete_or_nothing(missed: int) -> None:
    """The buffer keeps 3 packets: after 2 missed ones the client's offset is still there and
    everything is replayed; after 5 it is gone, and the client starts afresh (never partial)."""
    async with serve(server_options=recovering(max_packets=3)) as server:
        await_join(server)
        client, reply, offset = await joined_client(server)
        await drop(server, client)
        for i in range(missed):
            server.sio.main.emit("missed", i)
        back, new_reply = await reconnect(server, {"pid": reply["pid"], "offset": offset})
        if missed == 5:
            assert new_reply["sid"] != reply["sid"]
            await assert_fresh_start(back)
            return
        assert new_reply["sid"] == reply["sid"]
        assert [(await back.event())[:2] for _ in range(2)] == [["missed", 0], ["missed", 1]]
        await back.close()


async def test_no_restore_after_the_window() -> None:
    async with serve(server_options=recovering(window=0.2)) as server:
        await_join(server)
        client, reply, offset = await joined_client(server)
        await drop(server, client)
        await asyncio.sleep(0.3)  # the subject: the 0.2 s window passes
        back, new_reply = await reconnect(server, {"pid": reply["pid"], "offset": offset})
        assert new_reply["sid"] != reply["sid"]
        await back.close()


@pytest.mark.parametrize("how", ["client namespace disconnect", "server kick"])
async def test_no_restore_after_a_deliberate_disconnect(recovery_server: RunningServer, how: str) -> None:
    client, reply, offset = await joined_client(recovery_server, "r")
    socket_id = reply["sid"]
    if how == "client namespace disconnect":
        client.send(SocketPacket(T.DISCONNECT))
    else:
        recovery_server.sio.main.sockets[socket_id].disconnect(close=True)
    await eventually(lambda: socket_id not in recovery_server.sio.main.sockets, "the socket left")
    # a session record, were one stored, would be stored by a task spawned as the socket left: it
    # runs long before the new connection's handshake reaches restore_session
    await client.close()
    back, new_reply = await reconnect(recovery_server, {"pid": reply["pid"], "offset": offset})
    assert new_reply["sid"] != socket_id
    await back.close()
