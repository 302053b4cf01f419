"""Rooms, broadcast selection, and a broadcast encoded once for all its receivers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

import coup.core.adapter as adapter_module
from coup.core.socket import Socket
from coup.engine.session import Session
from coup.protocol.socketio import SocketPacketType
from coup.protocol.wire import Outbound
from tests.servers import RunningServer, serve
from tests.sioclient import SioClient, sio_connect
from tests.waiting import eventually

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]


@pytest_asyncio.fixture
async def server() -> AsyncIterator[RunningServer]:
    async with serve() as running:
        nsp = running.sio.main

        async def join(socket: Socket, args: list[Any]) -> list[str]:
            await socket.join(*args)
            return sorted(socket.rooms)

        async def leave(socket: Socket, args: list[Any]) -> list[str]:
            await socket.leave(args[0])
            return sorted(socket.rooms)

        def to_room(socket: Socket, args: list[Any]) -> None:
            socket.to(args[0]).emit("room-msg", args[1])

        nsp.on("join", join)
        nsp.on("leave", leave)
        nsp.on("to-room", to_room)
        yield running


async def connect_many(server: RunningServer, n: int) -> list[SioClient]:
    return [await sio_connect(server) for _ in range(n)]


def sid_of(client: SioClient) -> str:
    return str(client.connected["/"]["sid"])


async def ack(client: SioClient, event: str, *args: Any, ack_id: int = 1) -> list[Any]:
    client.emit(event, *args, ack=ack_id)
    while True:
        packet = await client.packet()
        if packet.type is SocketPacketType.ACK and packet.id == ack_id:
            return list(packet.data)


async def received(server: RunningServer, clients: list[SioClient]) -> list[list[list[Any]]]:
    """Every event each client got so far: an end marker sent to each socket's own room comes
    after everything broadcast before it (per-socket order is kept), so no waiting on timeouts."""
    result: list[list[list[Any]]] = []
    for client in clients:
        namespace, reply = next(iter(client.connected.items()))
        server.sio.of(namespace).to(reply["sid"]).emit("end-marker")
        events: list[list[Any]] = []
        while (event := await client.event()) != ["end-marker"]:
            events.append(event)
        result.append(events)
    return result


async def test_join_and_leave_and_own_room(server: RunningServer) -> None:
    (client,) = await connect_many(server, 1)
    own = sid_of(client)
    assert await ack(client, "join", "study:1", "study:2") == [sorted([own, "study:1", "study:2"])]
    assert await ack(client, "leave", "study:1", ack_id=2) == [sorted([own, "study:2"])]
    assert await ack(client, "leave", "not-a-member", ack_id=3) == [sorted([own, "study:2"])]
    await client.close()


async def test_room_broadcast_reaches_exactly_its_members(server: RunningServer) -> None:
    a, b, c, d = await connect_many(server, 4)
    for client in (a, b, c):
        await ack(client, "join", "study:7")
    await ack(d, "join", "study:8")
    server.sio.main.to("study:7").emit("news", 1)
    assert await received(server, [a, b, c, d]) == [[["news", 1]]] * 3 + [[]]


async def test_socket_to_excludes_the_sender(server: RunningServer) -> None:
    a, b, c = await connect_many(server, 3)
    for client in (a, b, c):
        await ack(client, "join", "chat")
    await ack(a, "to-room", "chat", "hello", ack_id=2)  # handled before the end marker is sent
    assert await received(server, [a, b, c]) == [[], [["room-msg", "hello"]], [["room-msg", "hello"]]]


async def test_to_several_rooms_is_a_union_without_duplicates(server: RunningServer) -> None:
    a, b, c = await connect_many(server, 3)
    await ack(a, "join", "r1", "r2")
    await ack(b, "join", "r2")
    await ack(c, "join", "r3")
    server.sio.main.to("r1").to("r2").emit("once")
    assert await received(server, [a, b, c]) == [[["once"]], [["once"]], []]


async def test_except_removes_members_of_a_room(server: RunningServer) -> None:
    a, b, c = await connect_many(server, 3)
    for client in (a, b, c):
        await ack(client, "join", "study")
    await ack(b, "join", "muted", ack_id=2)
    server.sio.main.to("study").except_("muted").emit("msg")
    server.sio.main.except_("muted").emit("all-but-muted")
    assert await received(server, [a, b, c]) == [[["msg"], ["all-but-muted"]], [], [["msg"], ["all-but-muted"]]]


async def test_emit_to_a_sockets_own_room(server: RunningServer) -> None:
    a, b = await connect_many(server, 2)
    server.sio.main.to(sid_of(b)).emit("private", "for b")
    assert await received(server, [a, b]) == [[], [["private", "for b"]]]


async def test_namespaces_are_separate(server: RunningServer) -> None:
    server.sio.of("/admin")
    a = await sio_connect(server)
    b = await SioClient.open(await server.websocket())
    await b.connect("/admin")
    server.sio.of("/admin").emit("admin-only")
    server.sio.main.emit("main-only")
    assert await received(server, [a, b]) == [[["main-only"]], [["admin-only"]]]


async def test_fetch_sockets_join_leave_and_disconnect_by_selection(server: RunningServer) -> None:
    a, b, c = await connect_many(server, 3)
    await ack(a, "join", "team")
    await ack(b, "join", "team")
    infos = await server.sio.main.to("team").fetch_sockets()
    assert sorted(i.id for i in infos) == sorted([sid_of(a), sid_of(b)])
    assert all("team" in i.rooms for i in infos)
    await server.sio.main.to("team").sockets_join("team-b")
    await server.sio.main.to(sid_of(a)).sockets_leave("team")
    server.sio.main.to("team-b").emit("tb")
    server.sio.main.to("team").emit("t")
    assert await received(server, [a, b, c]) == [[["tb"]], [["tb"], ["t"]], []]
    await server.sio.main.to("team-b").disconnect_sockets()
    for client in (a, b):
        packet = await client.packet()
        assert packet.type is SocketPacketType.DISCONNECT
    assert list(server.sio.main.sockets) == [sid_of(c)]


async def test_rooms_are_left_on_disconnect_and_handlers_still_see_them(server: RunningServer) -> None:
    seen: list[tuple[str, frozenset[str]]] = []

    async def on_disconnect(socket: Socket, reason: str) -> None:
        seen.append((reason, socket.rooms))

    server.sio.main.on_disconnect(on_disconnect)
    a, b = await connect_many(server, 2)
    await ack(a, "join", "study:1")
    sid = sid_of(a)
    await a.close()
    await eventually(lambda: seen, "the disconnect handler ran")
    assert seen == [("transport close", frozenset({sid, "study:1"}))]
    adapter = server.sio.main.adapter
    assert "study:1" not in adapter.local.rooms
    server.sio.main.to("study:1").emit("nobody")
    assert await received(server, [b]) == [[]]


async def test_a_broadcast_is_encoded_once_and_shares_its_bytes(server: RunningServer,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    clients = await connect_many(server, 20)
    for client in clients:
        await ack(client, "join", "big-room")
    encodes = 0
    real_encode = adapter_module.encode

    def counting_encode(packet: Any) -> Any:
        nonlocal encodes
        encodes += 1
        return real_encode(packet)

    sent: list[Outbound] = []
    real_send = Session.send

    def spying_send(session: Session, out: Outbound) -> None:
        sent.append(out)
        real_send(session, out)

    monkeypatch.setattr(adapter_module, "encode", counting_encode)
    monkeypatch.setattr(Session, "send", spying_send)
    server.sio.main.to("big-room").emit("announcement", {"text": "exam moved", "room": 12})
    assert encodes == 1
    assert len(sent) == 20
    assert all(out is sent[0] for out in sent)
    frames = {id(out.ws_bytes()) for out in sent}
    assert len(frames) == 1  # framed once: every receiver writes the same bytes object
    monkeypatch.undo()
    results = await received(server, clients)
    assert all(r == [["announcement", {"text": "exam moved", "room": 12}]] for r in results)


async def test_broadcast_order_is_kept_per_receiver(server: RunningServer) -> None:
    clients = await connect_many(server, 5)
    for i in range(50):
        server.sio.main.emit("seq", i)
    for events in await received(server, clients):
        assert [e[1] for e in events] == list(range(50))
