"""Malformed input of every kind ends only the offending session, with its reason in the log.

A bystander client stays connected through each case and must still get its echo. Every
case opens its own offending connection (WebSocket frames, Engine.IO packets, Socket.IO
packets, polling bodies, WebSocket handshakes).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from coup.core.options import ServerOptions
from coup.core.socket import Socket
from coup.engine.options import EngineOptions
from tests.servers import POLLING_PATH, RunningServer, serve
from tests.sioclient import SioClient, sio_connect
from tests.wsclient import (
    OP_BINARY,
    OP_CONT,
    OP_PING,
    OP_TEXT,
    HandshakeRefused,
    RawWebSocket,
    binary,
    client_frame,
    close_frame,
    text,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]

MAX_PAYLOAD = 10_000


@pytest_asyncio.fixture
async def server() -> AsyncIterator[RunningServer]:
    async with serve(EngineOptions(max_payload=MAX_PAYLOAD), ServerOptions(max_attachments=3)) as running:
        def echo(socket: Socket, args: list[Any]) -> None:
            socket.emit("echo", *args)

        running.sio.main.on("echo", echo)
        running.sio.of("/other")
        yield running


async def assert_bystander_works(bystander: SioClient, tag: str) -> None:
    bystander.emit("echo", tag)
    assert await bystander.event() == ["echo", tag]


PH = '{"_placeholder":true,"num":0}'

#: (case, what the offender sends once its Socket.IO connection is up, expected close code)
WEBSOCKET_CASES: list[tuple[str, bytes, int | None]] = [
    # RFC 6455 frames
    ("unmasked frame", client_frame(OP_TEXT, b'42["echo"]', masked=False), 1002),
    ("RSV bit without extension", client_frame(OP_TEXT, b'42["echo"]', rsv=4), 1002),
    ("message over maxPayload", client_frame(OP_BINARY, b"x" * (MAX_PAYLOAD + 1)), 1009),
    ("fragments over maxPayload", client_frame(OP_TEXT, b"4" * 6000, fin=False)
     + client_frame(OP_CONT, b"x" * 6000), 1009),
    ("control frame over 125 bytes", client_frame(OP_PING, b"p" * 126), 1002),
    ("fragmented control frame", client_frame(OP_PING, b"p", fin=False), 1002),
    ("reserved opcode", client_frame(0x3, b"x"), 1002),
    ("continuation without a message", client_frame(OP_CONT, b"x"), 1002),
    ("text not UTF-8", client_frame(OP_TEXT, b"42\xff"), 1007),
    ("close code 1005 sent by a peer", close_frame(1005), 1002),
    ("close with one byte", client_frame(0x8, b"\x03"), 1002),
    # Engine.IO packets
    ("empty Engine.IO packet", text(""), None),
    ("unknown Engine.IO type", text("abc"), None),
    ("Engine.IO type 7", text("7"), None),
    ("OPEN from a client", text("0"), None),
    ("UPGRADE on an open session", text("5"), None),
    # Socket.IO packets
    ("unknown Socket.IO type", text("4abc"), None),
    ("Socket.IO type 9", text("49"), None),
    ("invalid JSON", text('42["echo",'), None),
    ("NaN", text('42["echo",NaN]'), None),
    ("nesting too deep", text('42["echo",' + "[" * 3000 + "]" * 3000 + "]"), None),
    ("integer too long", text('42["echo",' + "7" * 5000 + "]"), None),
    ("number overflowing", text('42["echo",1e400]'), None),
    ("payload not an array", text("42{}"), None),
    ("empty event", text("42[]"), None),
    ("reserved event name", text('42["connect"]'), None),
    ("event name not a string", text("42[true]"), None),
    ("invalid ack id", text('42abc["echo"]'), None),
    ("ack id too long", text('42' + "9" * 20 + '["echo"]'), None),
    ("ACK without id", text('43["x"]'), None),
    ("DISCONNECT with data", text("41{}"), None),
    ("CONNECT payload not an object", text("40/other,[1]"), None),
    ("event for a namespace not joined", text('42/other,["echo"]'), None),
    ("CONNECT_ERROR from a client", text('44{"message":"x"}'), None),
    ("second CONNECT to a joined namespace", text("40"), None),
    ("attachment count over the limit", text(f'454-["echo",{PH},{PH},{PH},{PH}]'), None),
    ("attachment count missing", text('45-["echo"]'), None),
    ("placeholder beyond the attachments", text('451-["echo",{"_placeholder":true,"num":5}]')
     + binary(b"x"), None),
    ("attachment without placeholder", text('452-["echo",' + PH + "]") + binary(b"a") + binary(b"b"), None),
    ("binary without a packet", binary(b"\x01\x02"), None),
    ("text while an attachment is due", text('451-["echo",' + PH + "]") + text('42["echo"]'), None),
]


@pytest.mark.parametrize(("case", "data", "code"), WEBSOCKET_CASES, ids=[c[0] for c in WEBSOCKET_CASES])
async def test_malformed_websocket_input_closes_only_that_session(
        server: RunningServer, case: str, data: bytes, code: int | None,
        caplog: pytest.LogCaptureFixture) -> None:
    bystander = await sio_connect(server)
    offender = await sio_connect(server)
    with caplog.at_level(logging.INFO, logger="coup"):
        offender.ws.send(data)
        close_code = await offender.closed()
    if code is not None:
        assert close_code == code
    assert f"session {offender.engine_sid}" in caplog.text
    assert "invalid WebSocket frame" in caplog.text or "parse error" in caplog.text
    assert offender.engine_sid not in server.engine.sessions
    await assert_bystander_works(bystander, case)
    await bystander.close()
    await offender.close()


async def test_every_malformed_kind_in_turn_with_one_bystander(server: RunningServer) -> None:
    """The same bystander survives all offenders one after another, and nothing leaks."""
    bystander = await sio_connect(server)
    for case, data, _ in WEBSOCKET_CASES:
        offender = await sio_connect(server)
        offender.ws.send(data)
        await offender.closed()
        await offender.close()
        await assert_bystander_works(bystander, case)
    assert list(server.engine.sessions) == [bystander.engine_sid]
    assert len(server.sio.main.sockets) == 1
    await bystander.close()


# ---------------------------------------------------------------------------- polling


async def polling_session(http: aiohttp.ClientSession, server: RunningServer) -> str:
    async with http.get(server.url + POLLING_PATH) as resp:
        sid: str = json.loads((await resp.text())[1:])["sid"]
    async with http.post(f"{server.url}{POLLING_PATH}&sid={sid}", data="40") as resp:
        assert resp.status == 200
    return sid


POLLING_CASES: list[tuple[str, bytes]] = [
    ("invalid base64 record", b"bAQ=ID"),
    ("body not UTF-8", b"42[\"echo\",\"\xff\"]"),
    ("empty record", b'42["echo"]\x1e\x1e42["echo"]'),
    ("unknown Engine.IO type", b"abc"),
    ("too many packets in one POST", b"\x1e".join([b"3"] * 300)),
    ("invalid Socket.IO packet", b"42{}"),
    ("body over maxPayload", b"4" + b"x" * MAX_PAYLOAD),
]


@pytest.mark.parametrize(("case", "body"), POLLING_CASES, ids=[c[0] for c in POLLING_CASES])
async def test_malformed_polling_body_closes_only_that_session(
        server: RunningServer, case: str, body: bytes, caplog: pytest.LogCaptureFixture) -> None:
    bystander = await sio_connect(server)
    async with aiohttp.ClientSession() as http:
        sid = await polling_session(http, server)
        with caplog.at_level(logging.INFO, logger="coup"):
            async with http.post(f"{server.url}{POLLING_PATH}&sid={sid}", data=body) as resp:
                status = resp.status
        # Engine.IO-level errors answer 400; a bad Socket.IO packet is a valid Engine.IO POST
        assert status in (200, 400)
        assert f"closing session {sid}: parse error" in caplog.text
        async with http.get(f"{server.url}{POLLING_PATH}&sid={sid}") as resp:
            assert resp.status == 400
            assert (await resp.json())["code"] == 1
    await assert_bystander_works(bystander, case)
    await bystander.close()


@pytest.mark.parametrize(("case", "headers", "status"), [
    ("no Upgrade header", {"Connection": "keep-alive"}, 400),
    ("bad Sec-WebSocket-Key", {"Sec-WebSocket-Key": "short"}, 400),
    ("unsupported version", {"Sec-WebSocket-Version": "8"}, 426),
])
async def test_bad_websocket_handshakes_are_refused(server: RunningServer, case: str, headers: dict[str, str],
                                                   status: int) -> None:
    base = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    base.update(headers)
    if case == "no Upgrade header":
        del base["Upgrade"]
    bystander = await sio_connect(server)
    async with aiohttp.ClientSession() as http, \
            http.get(f"{server.url}/socket.io/?EIO=4&transport=websocket", headers=base) as resp:
        assert resp.status == status
    assert len(server.engine.sessions) == 1
    await assert_bystander_works(bystander, case)
    await bystander.close()


async def test_websocket_for_an_unknown_sid_is_refused(server: RunningServer) -> None:
    with pytest.raises(HandshakeRefused) as info:
        await RawWebSocket.connect(server.port, "/socket.io/?EIO=4&transport=websocket&sid=nope")
    assert info.value.status == 400
    assert b'"code": 1' in info.value.body
