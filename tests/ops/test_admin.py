"""The Socket.IO Admin UI's protocol on `/admin`, driven by the stock npm socket.io-client as the
admin UI drives it (@socket.io/admin-ui's `ui/src/App.vue`: `io(url + "/admin", {auth})`)."""

from __future__ import annotations

from typing import Any

import bcrypt
import pytest

from coup.admin import AdminSessions
from coup.config import Secret
from tests.clients.jsclient import JsClient
from tests.domain.support import Client, NodeFactory

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

USER, PASSWORD = "admin", "a-long-admin-password"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
LOGIN = {"username": USER, "password": PASSWORD}


def admin_settings(**overrides: Any) -> dict[str, Any]:
    return {"admin_user": USER, "admin_password_hash": Secret(HASH), **overrides}


def args(record: dict[str, Any]) -> list[Any]:
    return list(record["args"])


async def sign_in(js: JsClient, name: str, url: str, **auth: Any) -> dict[str, Any]:
    return await js.connect(name, url, namespace="/admin", transports=["polling", "websocket"],
                            auth=auth or LOGIN)


async def test_a_signed_in_admin_sees_servers_sockets_rooms_and_rates(make_node: NodeFactory, js_client: Any) -> None:
    node = await make_node(**admin_settings())
    alice = Client(node, "websocket")
    js = await js_client()
    try:
        await alice.connect(1)
        assert (await alice.call("join-study", {"studyId": 1}))["ok"] is True
        alice_sid = alice.sio.get_sid("/")

        assert (await sign_in(js, "ui", node.url))["type"] == "connect"
        session = args(await js.expect_event("ui", "session"))[0]
        assert AdminSessions(USER, HASH).valid(session)
        config = args(await js.expect_event("ui", "config"))[0]
        assert config == {"supportedFeatures": ["AGGREGATED_EVENTS", "ALL_EVENTS"]}  # read-only
        sockets = args(await js.expect_event("ui", "all_sockets"))[0]
        shown = next(s for s in sockets if s["id"] == alice_sid)
        assert shown["nsp"] == "/" and shown["transport"] == "websocket"
        assert "study:1" in shown["rooms"] and "user:1" in shown["rooms"]
        assert shown["data"] == {"userId": 1, "userName": "Alice"}
        assert "authorization" not in shown["handshake"]["headers"] and "cookie" not in shown["handshake"]["headers"]

        stats = args(await js.expect_event("ui", "server_stats"))[0]
        assert stats["serverId"] == node.node.sio.node_id and stats["clientsCount"] == 2
        assert {"name": "/", "socketsCount": 1} in stats["namespaces"]
        # events per second: the next tick tells what happened since the last
        await alice.call("message", {"studyId": 1, "content": "counted"})
        later = args(await js.expect_event("ui", "server_stats", timeout=5))[0]
        kinds = {e["type"]: e["count"] for e in later["aggregatedEvents"]}
        assert kinds.get("packetsIn", 0) >= 1 and kinds.get("packetsOut", 0) >= 1, later

        # live: a socket that comes, joins a room, and goes
        bob = Client(node, "polling")
        await bob.connect(2)
        bob_sid = bob.sio.get_sid("/")
        connected = await js.expect(lambda r: r["type"] == "event" and r["event"] == "socket_connected"
                                    and r["args"][0]["id"] == bob_sid)
        assert connected["args"][0]["transport"] == "polling"
        await bob.call("join-study", {"studyId": 1})
        joined = await js.expect(lambda r: r["type"] == "event" and r["event"] == "room_joined"
                                 and r["args"][2] == bob_sid and r["args"][1] == "study:1", timeout=5)
        assert joined["args"][0] == "/"
        await bob.close()
        gone = await js.expect(lambda r: r["type"] == "event" and r["event"] == "socket_disconnected"
                               and r["args"][1] == bob_sid)
        assert gone["args"][2] == "client namespace disconnect"

        # read-only: the UI's write commands change nothing
        await js.emit("ui", "_disconnect", "/", False)
        await js.emit("ui", "emit", "/", "study:1", "notice", {"x": 1})
        await js.expect_event("ui", "server_stats", timeout=5)  # a tick later
        assert alice.sio.connected and alice.got("notice") == []

        # the session id lets the UI reconnect without the password (as it does after a reload)
        again = await js.connect("reload", node.url, namespace="/admin", auth={"sessionId": session})
        assert again["type"] == "connect"
    finally:
        await alice.close()


async def test_wrong_or_missing_credentials_are_refused(make_node: NodeFactory, js_client: Any) -> None:
    node = await make_node(**admin_settings())
    js = await js_client()
    for name, auth in (("wrong", {"username": USER, "password": "not-it"}), ("nobody", {"username": "x",
                       "password": PASSWORD}), ("forged", {"sessionId": "9999999999.deadbeef"}), ("none", {})):
        record = await js.connect(name, node.url, namespace="/admin", auth=auth)
        assert record["type"] == "connect_error" and record["message"] == "invalid credentials", (name, record)
    assert js.events("wrong", "all_sockets") == []


async def test_without_admin_settings_there_is_no_admin_namespace(make_node: NodeFactory, js_client: Any) -> None:
    node = await make_node()
    js = await js_client()
    record = await js.connect("ui", node.url, namespace="/admin", auth=LOGIN)
    assert record["type"] == "connect_error" and record["message"] == "Invalid namespace"


async def test_with_readonly_off_the_admin_can_emit_and_disconnect(make_node: NodeFactory, js_client: Any) -> None:
    node = await make_node(**admin_settings(admin_readonly=False))
    alice = Client(node, "websocket")
    js = await js_client()
    try:
        await alice.connect(1)
        assert (await alice.call("join-study", {"studyId": 1}))["ok"] is True
        await sign_in(js, "ui", node.url)
        features = args(await js.expect_event("ui", "config"))[0]["supportedFeatures"]
        assert {"EMIT", "JOIN", "LEAVE", "DISCONNECT", "MDISCONNECT"} <= set(features)
        await js.emit("ui", "emit", "/", "study:1", "notice", {"from": "admin"})
        assert await alice.wait("notice") == {"from": "admin"}
        await js.emit("ui", "_disconnect", "/", False, "study:1")
        await js.expect(lambda r: r["type"] == "event" and r["event"] == "socket_disconnected"
                        and r["args"][2] == "server namespace disconnect")
    finally:
        await alice.close()
