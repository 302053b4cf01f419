"""While a socket connects: what is sent to it waits for the CONNECT reply, and a recovered
client gets everything it missed exactly once, in order, however long the connect takes.

A connect has two waits: the connection middleware (the CoUp domain checks the token and
reads the database) and joining the rooms (a cluster adapter awaits its Redis subscriptions;
`SlowJoinAdapter` does the same here). Broadcasts sent during either must neither be lost
nor reach the client before its ``40{"sid":...}``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, NamedTuple

import pytest

from coup.core.adapter import MemoryAdapter
from coup.core.namespace import Namespace
from coup.core.server import AdapterFactory
from coup.engine.options import EngineOptions
from coup.protocol.socketio import SocketPacketType
from tests.core.test_disconnect_and_recovery import (
    assert_fresh_start,
    await_join,
    drop,
    joined_client,
    reconnect,
    recovering,
)
from tests.gate import Gate
from tests.servers import RunningServer, serve
from tests.sioclient import Closed, SioClient, sio_connect
from tests.waiting import eventually

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]

T = SocketPacketType


class SlowJoinAdapter(MemoryAdapter):
    """Joins as the Redis adapter does: local membership at once, then an await (its
    subscription, here `gate`) during which other tasks run and broadcast."""

    def __init__(self, nsp: Namespace, gate: Gate) -> None:
        super().__init__(nsp)
        self.gate = gate

    async def add_all(self, sid: str, rooms: Iterable[str]) -> None:
        self.local.add_local(sid, rooms)
        await self.gate.wait()

    @classmethod
    def behind(cls, gate: Gate) -> AdapterFactory:
        return lambda nsp: cls(nsp, gate)


class Reconnecting(NamedTuple):
    gate: Gate
    reply: dict[str, Any]
    offset: str
    task: asyncio.Task[tuple[SioClient, dict[str, Any]]]


async def reconnecting_behind_middleware(server: RunningServer) -> Reconnecting:
    """A client in room "r" drops, misses ("m", 1), and reconnects with its pid and offset;
    the reconnect waits in the connection middleware, at the returned (closed) gate."""
    gate = Gate()
    await_join(server)
    server.sio.main.use(gate.middleware)
    client, reply, offset = await joined_client(server, "r")
    await drop(server, client)
    server.sio.main.to("r").emit("m", 1)
    gate.close()
    task = asyncio.create_task(reconnect(server, {"pid": reply["pid"], "offset": offset}))
    await gate.entered.wait()
    return Reconnecting(gate, reply, offset, task)


async def connecting(server: RunningServer, auth: dict[str, Any] | None = None) -> asyncio.Task[SioClient]:
    """Start a connect in the background (the test acts while it waits)."""
    return asyncio.create_task(sio_connect(server, auth=auth))


async def events(client: SioClient, count: int) -> list[list[Any]]:
    return [await client.event() for _ in range(count)]


def assert_offsets_increase(received: list[list[Any]]) -> None:
    offsets = [int(e[-1]) for e in received]
    assert offsets == sorted(set(offsets)), offsets


async def test_broadcasts_during_the_middleware_reach_the_recovered_client_once_in_order() -> None:
    async with serve(server_options=recovering()) as server:
        nsp = server.sio.main
        gate, reply, _, back_task = await reconnecting_behind_middleware(server)
        nsp.to("r").emit("m", 2)  # while the middleware checks the token
        nsp.emit("m", 3)
        nsp.to("elsewhere").emit("m", "not for it")
        gate.open()
        back, new_reply = await back_task  # its first packet is the CONNECT reply
        assert new_reply == reply
        nsp.to("r").emit("m", 4)

        received = await events(back, 4)
        assert [e[:2] for e in received] == [["m", 1], ["m", 2], ["m", 3], ["m", 4]]
        assert_offsets_increase(received)
        back.emit("status", ack=1)  # nothing twice: the next packet is the answer
        packet = await back.packet()
        assert packet.type is T.ACK and packet.data[0]["recovered"] is True
        await back.close()


@pytest.mark.parametrize("kind", ["fresh", "recovered"])
async def test_nothing_reaches_a_client_before_its_connect_reply(kind: str) -> None:
    gate = Gate()
    async with serve(server_options=recovering(), adapter_factory=SlowJoinAdapter.behind(gate)) as server:
        nsp = server.sio.main
        await_join(server)
        auth = None
        before: list[int] = []
        if kind == "recovered":
            client, reply, offset = await joined_client(server, "r")
            await drop(server, client)
            nsp.to("r").emit("m", 0)  # missed while away
            before = [0]
            auth = {"pid": reply["pid"], "offset": offset}

        gate.close()
        task = await connecting(server, auth)
        await gate.entered.wait()  # joined locally, waiting for the "subscription"
        (socket,) = [s for s in nsp.sockets.values() if s.connected]
        nsp.emit("m", 1)
        nsp.to(socket.id).emit("m", 2)
        if kind == "recovered":
            nsp.to("r").emit("m", 3)
        socket.emit("m", 4)
        question = asyncio.create_task(socket.emit_with_ack("question", 5, timeout=3))
        await asyncio.sleep(0)  # the question is sent
        gate.open()
        client = await task  # asserts that the first packet is the CONNECT reply
        if kind == "recovered":
            assert client.connected["/"]["sid"] == socket.id

        expected = [*before, 1, 2, *([3] if kind == "recovered" else []), 4]
        received = await events(client, len(expected))
        assert [e[:2] for e in received] == [["m", n] for n in expected]
        assert_offsets_increase(received)
        packet = await client.packet()
        assert (packet.type, packet.data) == (T.EVENT, ["question", 5])
        assert packet.id is not None
        client.ack(packet.id, "answer")
        assert await question == ["answer"]
        await client.close()


async def test_a_flood_to_a_connecting_socket_closes_only_it() -> None:
    """What is held for a connecting socket is bounded like any session's queue."""
    gate = Gate()
    async with serve(EngineOptions(max_buffered_bytes=64 * 1024), recovering(),
                     adapter_factory=SlowJoinAdapter.behind(gate)) as server:
        nsp = server.sio.main
        await_join(server)
        bystander = await sio_connect(server)
        gate.close()
        task = await connecting(server)
        await gate.entered.wait()
        for _ in range(10):
            nsp.emit("big", "x" * 10_000)
        gate.open()
        with pytest.raises((Closed, asyncio.IncompleteReadError, ConnectionError)):
            await task
        for _ in range(10):
            assert (await bystander.event())[0] == "big"
        bystander.emit("status", ack=1)
        assert (await bystander.packet()).type is T.ACK
        await bystander.close()


async def test_a_replay_that_can_no_longer_be_complete_gives_a_fresh_session() -> None:
    """The buffer moves past the client's offset while its middleware runs: the connection
    is closed before any replay, and the client's next attempt starts afresh (never partial)."""
    async with serve(server_options=recovering(max_packets=3)) as server:
        nsp = server.sio.main
        gate, reply, offset, task = await reconnecting_behind_middleware(server)  # the offset is still buffered
        for n in range(5):
            nsp.to("r").emit("m", 2 + n)  # pushes the client's offset out of the 3-packet buffer
        gate.open()
        with pytest.raises((Closed, asyncio.IncompleteReadError, ConnectionError)):
            await task
        await eventually(lambda: reply["pid"] in nsp.adapter._store._sessions,  # type: ignore[attr-defined]
                         "the session record is stored again (by a task)")
        back, new_reply = await reconnect(server, {"pid": reply["pid"], "offset": offset})
        assert new_reply["sid"] != reply["sid"]
        await assert_fresh_start(back)
