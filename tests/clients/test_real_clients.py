"""Real clients against a real node: python-socketio's AsyncClient and npm socket.io-client 4.8.

Every test runs for each way of connecting (websocket only, polling only, polling upgraded
to websocket), for both clients where the client can do it (python-socketio has no
connection state recovery), and checks on both ends that the connection really uses that
transport. What is asserted is what a user sees: acks, binary, namespaces,
rooms, reconnection and recovery.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from coup.engine.polling import PollingTransport
from tests.clients.conftest import App, AppStarter, MakeClient, check_transport
from tests.clients.realclients import TRANSPORTS, NodeClient, RealClient
from tests.clients.records import TIMEOUT
from tests.gate import Gate
from tests.waiting import eventually

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


async def _open(make_client: MakeClient, app: App, transport_mode: str, namespaces: Sequence[str] = ("/",),
                **kwargs: Any) -> tuple[RealClient, dict[str, str]]:
    client = await make_client()
    sids = await client.open(app.url, TRANSPORTS[transport_mode], namespaces, **kwargs)
    await check_transport(client, app, sids[namespaces[0]], transport_mode)
    return client, sids


async def test_acks_both_ways(app: App, make_client: MakeClient, transport_mode: str) -> None:
    client, sids = await _open(make_client, app, transport_mode)

    # client -> server: the handler's return value is the acknowledgement
    assert await client.call("echo", 1, "two", {"three": [3]}) == [1, "two", {"three": [3]}]
    assert await client.call("echo") == []
    # server -> client: the client's answer comes back to the server
    socket = app.socket(sids["/"])
    assert await socket.emit_with_ack("question", {"q": 1}, timeout=TIMEOUT) == [{"q": 1}]
    await client.reply("question", ["answer", 42])
    assert await socket.emit_with_ack("question", "again", timeout=TIMEOUT) == ["answer", 42]
    # an event that asks for an ack carries no recovery offset (as the reference sends it)
    assert client.events("question") == [[{"q": 1}], ["again"]]


async def test_binary_round_trip(app: App, make_client: MakeClient, transport_mode: str) -> None:
    client, sids = await _open(make_client, app, transport_mode)
    blob = bytes(range(256))

    # client -> server -> client, top level and nested, next to plain values
    answer = await client.call("echo", blob, {"name": "file.bin", "data": b"\x00\xff\x00"}, "tail")
    assert answer == [blob, {"name": "file.bin", "data": b"\x00\xff\x00"}, "tail"]
    # server -> client (BINARY_EVENT; the recovery offset stays a plain trailing string)
    app.socket(sids["/"]).emit("blob", blob, [b"", b"x"])
    args = await client.expect_event("blob")
    assert args[:2] == [blob, [b"", b"x"]]
    assert len(args) == 3 and isinstance(args[2], str)
    # server -> client -> server: an ack carrying binary back
    assert await app.socket(sids["/"]).emit_with_ack("bin-question", b"\x01\x02", timeout=TIMEOUT) == [b"\x01\x02"]


async def test_two_namespaces_on_one_connection(app: App, make_client: MakeClient, transport_mode: str) -> None:
    client, sids = await _open(make_client, app, transport_mode, namespaces=("/", "/custom"))

    main, custom = app.socket(sids["/"]), app.socket(sids["/custom"], "/custom")
    assert main.session is custom.session, "both namespaces must share one Engine.IO connection"
    assert sids["/"] != sids["/custom"]
    assert await client.call("whoami") == [{"namespace": "/", "sid": sids["/"]}]
    assert await client.call("whoami", namespace="/custom") == [{"namespace": "/custom", "sid": sids["/custom"]}]
    # each namespace gets only its own events
    app.main.emit("hello", "main")
    app.node.sio.of("/custom").emit("hello", "custom")
    assert (await client.expect_event("hello", "/"))[0] == "main"
    assert (await client.expect_event("hello", "/custom"))[0] == "custom"
    app.main.emit("fence")
    app.node.sio.of("/custom").emit("fence")
    await client.expect_event("fence", "/")
    await client.expect_event("fence", "/custom")
    assert [a[0] for a in client.events("hello", "/")] == ["main"]
    assert [a[0] for a in client.events("hello", "/custom")] == ["custom"]
    # leaving one namespace keeps the other (and the connection) alive
    assert await custom.emit_with_ack("are-you-there", "/custom", timeout=TIMEOUT) == ["/custom"]
    custom.disconnect()
    await app.log.expect("disconnect", socket="/custom", sid=sids["/custom"])
    assert await client.call("echo", "still here") == ["still here"]


async def test_room_broadcast_reaches_exactly_its_members(app: App, make_client: MakeClient,
                                                          transport_mode: str) -> None:
    opened = [await _open(make_client, app, transport_mode) for _ in range(3)]
    (alice, _), (bob, _), (carol, _) = opened
    assert await alice.call("join", "study:1") == [["study:1"]]
    assert await bob.call("join", "study:1") == [["study:1"]]
    assert await carol.call("join", "study:2") == [["study:2"]]

    app.main.to("study:1").emit("news", {"n": 1})
    # a fence to everyone: a client that got it would have got the room's event before
    app.main.emit("fence", 1)
    for client in (alice, bob, carol):
        await client.expect_event("fence")
    assert [a[0] for a in alice.events("news")] == [{"n": 1}]
    assert [a[0] for a in bob.events("news")] == [{"n": 1}]
    assert carol.events("news") == []

    # socket.to(room) from a member reaches the others of the room, not the sender
    await alice.emit("shout", "study:1", "hi")
    assert (await bob.expect_event("shout"))[0] == "hi"
    app.main.emit("fence", 2)
    for client in (alice, bob, carol):
        await client.expect_event("fence")
    assert alice.events("shout") == []
    assert carol.events("shout") == []
    assert len(bob.events("shout")) == 1


async def test_reconnects_after_server_restart(start_app: AppStarter, make_client: MakeClient,
                                               transport_mode: str) -> None:
    first = await start_app()
    client, sids = await _open(make_client, first, transport_mode)
    await client.expect_connect()
    transport = first.socket(sids["/"]).session.transport
    if isinstance(transport, PollingTransport):
        # an idle polling client has a GET waiting: the shutdown must not tell it to stay away
        await eventually(lambda: transport.waiting, "the client's GET is waiting")

    await first.running.stop()
    await client.log.expect("disconnect", socket="/")
    second = await start_app(port=first.port)

    record = await client.expect_connect(timeout=20)  # the client reconnects by itself
    assert record["sid"] != sids["/"]
    assert record["recovered"] is False, "a new node knows nothing of the old session"
    assert await client.call("echo", "again") == ["again"]
    await check_transport(client, second, record["sid"], transport_mode)
    assert set(second.main.sockets) == {record["sid"]}


# python-socketio has no connection state recovery (it never sends pid/offset): Node only
@pytest.mark.parametrize("client_kind", ["node"])
async def test_recovery_restores_missed_events(app: App, make_client: MakeClient, transport_mode: str) -> None:
    # a reconnect delay long enough for the server to notice the drop and send meanwhile
    client, sids = await _open(make_client, app, transport_mode, reconnect_delay=1.0)
    assert isinstance(client, NodeClient)
    sid = sids["/"]
    assert await client.call("join", "study:1") == [["study:1"]]
    for n in (1, 2):
        app.main.to("study:1").emit("tick", n)
        await client.expect_event("tick")

    await client.drop()
    assert (await client.log.expect("disconnect", socket="/"))["reason"] == "transport close"
    await app.log.expect("disconnect", socket="/", sid=sid)
    # the client is away: these can only reach it through recovery
    assert sid not in app.main.sockets
    app.main.to("study:1").emit("tick", 3)
    app.main.to(sid).emit("tick", 4)          # its own room
    app.main.to("study:2").emit("tick", 99)   # a room it is not in
    app.main.emit("tick", 5)                   # everyone

    await client.expect_connect()
    record = await client.expect_connect()
    assert record["sid"] == sid and record["recovered"] is True
    assert app.socket(sid).recovered
    assert "study:1" in app.socket(sid).rooms, "rooms are restored with the session"
    app.main.to("study:1").emit("tick", 6)
    while (await client.expect_event("tick"))[0] != 6:
        pass

    ticks = client.events("tick")
    assert [args[0] for args in ticks] == [1, 2, 3, 4, 5, 6], "missed events in order, none twice"
    offsets = [int(args[-1]) for args in ticks]
    assert offsets == sorted(set(offsets))


@pytest.mark.parametrize("client_kind", ["node"])
async def test_recovery_with_a_slow_middleware_loses_nothing(app: App, make_client: MakeClient,
                                                             transport_mode: str) -> None:
    """Events sent to the room while the reconnecting client's middleware waits (a token
    check, a database read) reach it once, in order, after socket.io-client says connected."""
    gate = Gate()
    app.main.use(gate.middleware)
    client, sids = await _open(make_client, app, transport_mode, reconnect_delay=1.0)
    assert isinstance(client, NodeClient)
    sid = sids["/"]
    assert await client.call("join", "study:1") == [["study:1"]]
    app.main.to("study:1").emit("tick", 1)
    await client.expect_event("tick")

    gate.close()
    await client.drop()
    await app.log.expect("disconnect", socket="/", sid=sid)
    app.main.to("study:1").emit("tick", 2)    # missed while away
    await asyncio.wait_for(gate.entered.wait(), TIMEOUT)
    app.main.to("study:1").emit("tick", 3)    # while the middleware waits
    app.main.emit("tick", 4)
    gate.open()

    await client.expect_connect()
    record = await client.expect_connect()
    assert record["sid"] == sid and record["recovered"] is True
    app.main.to("study:1").emit("tick", 5)
    while (await client.expect_event("tick"))[0] != 5:
        pass
    ticks = client.events("tick")
    assert [args[0] for args in ticks] == [1, 2, 3, 4, 5], "missed events in order, none twice"
    offsets = [int(args[-1]) for args in ticks]
    assert offsets == sorted(set(offsets))


async def test_disconnect_returns_at_once(app: App, make_client: MakeClient, transport_mode: str) -> None:
    """A polling client's disconnect is not held until pingInterval + pingTimeout (45 s here)."""
    engine = app.node.engine.options
    bound = 5.0
    assert bound < (engine.ping_interval + engine.ping_timeout) / 5
    client, sids = await _open(make_client, app, transport_mode)
    session = app.socket(sids["/"]).session

    # python-socketio's disconnect() waits for its pending GET: it must be answered at once
    await asyncio.wait_for(client.disconnect(), bound)
    record = await app.log.expect("disconnect", socket="/", sid=sids["/"], timeout=bound)
    if client.kind == "python" and transport_mode != "polling":
        # python-socketio closes its WebSocket right after queueing DISCONNECT, before its
        # writer task sends it: the server sees the connection close instead
        assert record["reason"] in ("client namespace disconnect", "transport close")
    else:
        assert record["reason"] == "client namespace disconnect"
    assert (await client.log.expect("disconnect", socket="/", timeout=bound))["reason"] in (
        "client disconnect", "io client disconnect")
    await eventually(lambda: session.sid not in app.node.engine.sessions, "the Engine.IO session ended", bound)
