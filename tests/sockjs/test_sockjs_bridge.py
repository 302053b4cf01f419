"""The envelope bridge on the wire: raw SockJS frames against a node's /sockjs endpoint.

These drive the protocol by hand (no sockjs-client) to reach the corners a well-behaved
client never shows: bad envelopes, events before the auth answer, server-side
disconnects, lost clients, binary values, the raw /websocket endpoint.
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from coup.core.socket import Socket
from coup.protocol.socketio import SocketPacket, SocketPacketType, encode
from coup.protocol.wire import Outbound
from coup.transports.sockjs.bridge import BridgeContext
from coup.transports.sockjs.envelope import EnvelopeError, decode_inbound
from tests.conftest import RunningNode
from tests.waiting import eventually

pytestmark = pytest.mark.asyncio


class SockJSWebSocket:
    """A SockJS session over its WebSocket transport, speaking envelopes."""

    def __init__(self, ws: WebSocketClientConnection) -> None:
        self.ws = ws
        self.messages: list[Any] = []
        self.close_frame: list[Any] | None = None

    @classmethod
    async def open(cls, node: RunningNode, session: str = "s1") -> SockJSWebSocket:
        ws = await websocket_connect(node.url.replace("http", "ws") + f"/sockjs/000/{session}/websocket")
        client = cls(ws)
        assert await asyncio.wait_for(ws.read_message(), 5) == "o"
        return client

    def send(self, *envelopes: Any) -> None:
        self.ws.write_message(json.dumps([e if isinstance(e, str) else json.dumps(e) for e in envelopes]))

    async def next(self, timeout: float = 5.0) -> Any:
        """The next envelope; None once the close frame arrived."""
        while not self.messages:
            if self.close_frame is not None:
                return None
            frame = await asyncio.wait_for(self.ws.read_message(), timeout)
            if frame is None:
                return None
            if frame.startswith("a"):
                self.messages.extend(json.loads(m) for m in json.loads(frame[1:]))
            elif frame.startswith("c"):
                self.close_frame = json.loads(frame[1:])
        return self.messages.pop(0)

    async def until(self, kind: str, timeout: float = 5.0) -> Any:
        while True:
            message = await self.next(timeout)
            assert message is not None, f"closed {self.close_frame} while waiting for {kind}"
            if message["type"] == kind:
                return message

    async def closed(self) -> list[Any] | None:
        while await self.next() is not None:
            pass
        return self.close_frame


def auth(user: int, token: str | None = None) -> dict[str, Any]:
    return {"type": "auth", "auth": {"userId": user, "token": token or f"token-{user}"}}


# ---------------------------------------------------------------------- the happy path, envelope by envelope


async def test_auth_then_events_and_acks_both_ways(sockjs_node: RunningNode) -> None:
    client = await SockJSWebSocket.open(sockjs_node)
    client.send(auth(1))
    connected = await client.next()
    assert connected["type"] == "connect"
    socket = sockjs_node.node.sio.main.sockets[connected["sid"]]
    assert connected["pid"] == socket.pid
    assert socket.data == {"userId": 1}
    assert socket.handshake.extra == {"transport": "sockjs", "sockjs_transport": "websocket"}
    assert socket.session.sid in sockjs_node.node.engine.sessions

    client.send({"type": "event", "event": "join-study", "args": [{"studyId": 4}], "ack": 0})
    assert await client.next() == {"type": "ack", "id": 0, "args": [{"ok": True, "studyId": 4}]}
    assert "study:4" in socket.rooms

    ack = asyncio.ensure_future(socket.emit_with_ack("question", 42, timeout=5))
    asked = await client.until("event")
    assert asked["event"] == "question" and asked["args"] == [42]
    client.send({"type": "ack", "id": asked["ack"], "args": ["answer"]})
    assert await ack == ["answer"]

    # a refused request: the error event and a failed ack, exactly as Socket.IO clients get them
    client.send({"type": "event", "event": "message", "args": [{"studyId": 99, "content": "x"}], "ack": 1})
    error = await client.until("event")
    assert error["event"] == "error"
    assert error["args"][0] == {"message": "not in this study", "code": "FORBIDDEN", "event": "message"}
    assert await client.until("ack") == {
        "type": "ack", "id": 1, "args": [{"ok": False, "error": {"code": "FORBIDDEN", "message": "not in this study"}}]}


async def test_events_sent_before_the_auth_answer_run_after_it_in_order(sockjs_node: RunningNode) -> None:
    client = await SockJSWebSocket.open(sockjs_node)
    # one SockJS frame: auth and two events; the middleware answers on a later loop turn
    client.send(auth(2),
                {"type": "event", "event": "join-study", "args": [{"studyId": 1}], "ack": 10},
                {"type": "event", "event": "message", "args": [{"studyId": 1, "content": "hi"}], "ack": 11})
    assert (await client.next())["type"] == "connect"
    assert await client.next() == {"type": "ack", "id": 10, "args": [{"ok": True, "studyId": 1}]}
    broadcast = await client.next()
    assert broadcast["event"] == "message" and broadcast["args"][0] == {"content": "hi", "user": 2}
    assert await client.next() == {"type": "ack", "id": 11, "args": [{"ok": True}]}


async def test_refused_auth_can_be_retried_on_the_same_connection(sockjs_node: RunningNode) -> None:
    client = await SockJSWebSocket.open(sockjs_node)
    client.send(auth(3, "wrong"))
    assert await client.next() == {"type": "connect_error", "message": "인증 실패"}
    assert not sockjs_node.node.sio.main.sockets
    client.send(auth(3))
    assert (await client.next())["type"] == "connect"


async def test_binary_values_arrive_as_base64(sockjs_node: RunningNode) -> None:
    client = await SockJSWebSocket.open(sockjs_node)
    client.send(auth(4))
    sid = (await client.next())["sid"]
    sockjs_node.node.sio.main.sockets[sid].emit("file", {"name": "a.bin", "data": b"\x00\xffhi"})
    file = await client.until("event")
    assert file["event"] == "file"
    assert file["args"][0] == {"name": "a.bin", "data": {"_binary": base64.b64encode(b"\x00\xffhi").decode()}}


async def test_raw_websocket_endpoint_carries_one_envelope_per_message(sockjs_node: RunningNode) -> None:
    ws = await websocket_connect(sockjs_node.url.replace("http", "ws") + "/sockjs/websocket")
    ws.write_message(json.dumps(auth(5)))
    connected = json.loads(await asyncio.wait_for(ws.read_message(), 5))
    assert connected["type"] == "connect"
    ws.write_message(json.dumps({"type": "event", "event": "join-study", "args": [{"studyId": 2}], "ack": 1}))
    assert json.loads(await asyncio.wait_for(ws.read_message(), 5)) == {
        "type": "ack", "id": 1, "args": [{"ok": True, "studyId": 2}]}
    ws.close()


# ---------------------------------------------------------------------- bad input: a clear error, then close


@pytest.mark.parametrize(("message", "code"), [
    ("not json", "BAD_MESSAGE"),
    ("[1, 2]", "BAD_MESSAGE"),
    (json.dumps({"type": "shout"}), "BAD_MESSAGE"),
    (json.dumps({"type": "event", "event": "join-study"}), "AUTH_REQUIRED"),
])
async def test_protocol_errors_are_explained_then_the_connection_closes(
        sockjs_node: RunningNode, message: str, code: str) -> None:
    client = await SockJSWebSocket.open(sockjs_node)
    client.send(message)
    error = await client.next()
    assert error["type"] == "error" and error["code"] == code and error["message"]
    assert await client.closed() == [4400, code.lower()]
    await eventually(lambda: not sockjs_node.node.engine.sessions, "the core session is gone too")


@pytest.mark.parametrize(("envelope", "why"), [
    ({"type": "event", "event": "connect", "args": []}, "reserved"),
    ({"type": "event", "event": "x", "args": {"not": "a list"}}, '"args"'),
    ({"type": "event", "event": "x", "args": [], "ack": -1}, '"ack"'),
    ({"type": "event", "event": "x", "args": [], "ack": True}, '"ack"'),
    ({"type": "ack", "id": "7", "args": []}, '"id"'),
    ({"type": "auth", "auth": {}}, "already authenticated"),
])
async def test_bad_envelopes_after_auth_close_only_that_connection(
        sockjs_node: RunningNode, envelope: dict[str, Any], why: str) -> None:
    bystander = await SockJSWebSocket.open(sockjs_node, "bystander")
    bystander.send(auth(7))
    assert (await bystander.next())["type"] == "connect"

    client = await SockJSWebSocket.open(sockjs_node)
    client.send(auth(6))
    assert (await client.next())["type"] == "connect"
    client.send(envelope)
    error = await client.until("error")
    assert why in error["message"]
    assert (await client.closed() or [0])[0] == 4400

    bystander.send({"type": "event", "event": "join-study", "args": [{"studyId": 3}], "ack": 1})
    assert (await bystander.next())["type"] == "ack"


async def test_oversized_messages_are_refused(sockjs_node: RunningNode) -> None:
    limit = sockjs_node.node.settings.max_payload
    async with aiohttp.ClientSession() as http:
        base = sockjs_node.url + "/sockjs/000/big"
        async with http.post(base + "/xhr") as r:
            assert await r.text() == "o\n"
        async with http.post(base + "/xhr_send", data=json.dumps(["x" * (limit + 1)])) as r:
            assert r.status == 204
        async with http.post(base + "/xhr") as r:
            frames = await r.text()
    assert frames.startswith("a[")
    assert json.loads(json.loads(frames[1:])[0])["code"] == "TOO_LARGE"
    async with aiohttp.ClientSession() as http, http.post(base + "/xhr") as r:
        assert await r.text() == 'c[4413,"too_large"]\n'


async def test_envelope_decoder_rejects_what_socketio_would_reject() -> None:
    with pytest.raises(EnvelopeError):
        decode_inbound(json.dumps({"type": "event", "event": "", "args": []}), "/")
    with pytest.raises(EnvelopeError):
        decode_inbound(json.dumps({"type": "auth", "nsp": "no-slash"}), "/")
    with pytest.raises(EnvelopeError):
        decode_inbound(7, "/")
    ok = decode_inbound(json.dumps({"type": "event", "event": "x", "args": [1], "ack": 2**53 - 1}), "/chat")
    assert ok.packet == SocketPacket(SocketPacketType.EVENT, "/chat", ["x", 1], 2**53 - 1)


# ---------------------------------------------------------------------- closing, from either side


async def test_server_disconnect_sends_disconnect_then_a_close_frame(sockjs_node: RunningNode) -> None:
    client = await SockJSWebSocket.open(sockjs_node)
    client.send(auth(8))
    socket: Socket = sockjs_node.node.sio.main.sockets[(await client.next())["sid"]]
    socket.disconnect()
    assert await client.next() == {"type": "disconnect"}
    assert await client.closed() == [4000, "server namespace disconnect"]
    assert socket.disconnect_reason == "server namespace disconnect"


async def test_client_disconnect_and_lost_clients_reach_the_disconnect_handlers(sockjs_node: RunningNode) -> None:
    reasons: dict[str, tuple[str, frozenset[str]]] = {}
    both = asyncio.Event()

    async def record(socket: Socket, reason: str) -> None:
        reasons[socket.id] = (reason, socket.rooms)
        if len(reasons) == 2:
            both.set()

    sockjs_node.node.sio.main.on_disconnect(record)

    leaving = await SockJSWebSocket.open(sockjs_node, "leaving")
    leaving.send(auth(9))
    leaving_sid = (await leaving.next())["sid"]
    leaving.send({"type": "disconnect"})
    assert await leaving.closed() == [1000, "client disconnect"]

    lost = await SockJSWebSocket.open(sockjs_node, "lost")
    lost.send(auth(10), {"type": "event", "event": "join-study", "args": [{"studyId": 5}], "ack": 1})
    lost_sid = (await lost.next())["sid"]
    assert (await lost.next())["type"] == "ack"
    lost.ws.close()  # the client vanishes

    await asyncio.wait_for(both.wait(), 5)
    assert reasons[leaving_sid][0] == "client namespace disconnect"
    assert reasons[lost_sid] == ("transport close", frozenset({lost_sid, "user:10", "study:5"}))
    assert not sockjs_node.node.sio.main.sockets
    assert not sockjs_node.node.engine.sessions


async def test_broadcast_to_a_room_with_a_vanished_sockjs_member_reaches_the_others(
        sockjs_node: RunningNode) -> None:
    members = []
    for user in (11, 12):
        client = await SockJSWebSocket.open(sockjs_node, f"member{user}")
        client.send(auth(user), {"type": "event", "event": "join-study", "args": [{"studyId": 6}], "ack": 1})
        assert (await client.next())["type"] == "connect"
        assert (await client.next())["type"] == "ack"
        members.append(client)
    gone, staying = members
    gone.ws.close()
    nsp = sockjs_node.node.sio.main
    for n in range(20):  # broadcast while the server learns that one member is gone
        nsp.to("study:6").emit("message", {"n": n})
        await asyncio.sleep(0)
    received = [await staying.until("event") for _ in range(20)]
    assert [m["args"][0]["n"] for m in received] == list(range(20))


async def test_unauthenticated_connections_are_dropped_after_the_connect_timeout(sockjs_node: RunningNode) -> None:
    sio = sockjs_node.node.sio
    sio.options = replace(sio.options, connect_timeout=0.3)
    client = await SockJSWebSocket.open(sockjs_node)
    assert await client.closed() == [4000, "forced close"]


async def test_one_broadcast_is_translated_once_for_all_receivers(sockjs_node: RunningNode) -> None:
    context = BridgeContext(sockjs_node.node.engine, 1000)
    out = Outbound.message(encode(SocketPacket(SocketPacketType.EVENT, "/", ["message", {"a": 1}, "17"])))
    first = context.frame(out)
    assert first is not None and context.frame(out) is first
    assert json.loads(first.text) == {"type": "event", "event": "message", "args": [{"a": 1}, "17"]}
    assert json.loads(first.quoted) == first.text


async def test_node_shutdown_closes_sockjs_sessions_promptly(node_factory: Any) -> None:
    from tests.sockjs.conftest import install_test_handlers

    node = await node_factory(setup=lambda n: install_test_handlers(n.sio))
    authed = await SockJSWebSocket.open(node, "authed")
    authed.send(auth(40))
    assert (await authed.next())["type"] == "connect"
    anonymous = await SockJSWebSocket.open(node, "anonymous")
    async with aiohttp.ClientSession() as http:
        async with http.post(node.url + "/sockjs/000/streaming/xhr_streaming") as stream:
            assert (await stream.content.readline()).startswith(b"hhhh")
            assert await stream.content.readline() == b"o\n"
            await asyncio.wait_for(node.stop(), 5)
            assert await stream.content.readline() == b'c[4000,"server shutting down"]\n'
    assert await authed.closed() == [4000, "server shutting down"]
    assert await anonymous.closed() == [4000, "server shutting down"]
