"""The stock npm sockjs-client (through static/sockjs-coup.js) and a Socket.IO client share rooms.

Once per SockJS transport: authenticate, join a study room, exchange messages with a
python-socketio client in the same room (both directions, acks included), receive a
server-pushed notification in the personal room.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
import socketio

from tests.conftest import RunningNode, require
from tests.sockjs.conftest import AUTH_FAILED

pytestmark = pytest.mark.asyncio

TRANSPORTS = ["websocket", "xhr-streaming", "xhr-polling", "eventsource"]
# the transport name sockjs-client reports once connected
REPORTED = {"websocket": "websocket", "xhr-streaming": "xhr-streaming", "xhr-polling": "xhr-polling",
            "eventsource": "eventsource"}


async def socketio_client(url: str, user: int) -> tuple[socketio.AsyncClient, asyncio.Queue[Any]]:
    client = socketio.AsyncClient(reconnection=False)
    inbox: asyncio.Queue[Any] = asyncio.Queue()

    @client.on("message")  # type: ignore[misc]
    async def on_message(*args: Any) -> None:
        await inbox.put(args[0])

    await client.connect(url, auth={"userId": user, "token": f"token-{user}"}, transports=["websocket"])
    return client, inbox


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_sockjs_client_joins_the_same_rooms_as_socketio(
        sockjs_node: RunningNode, node_client: Any, transport: str) -> None:
    sockjs = await node_client(sockjs_node.url + "/sockjs", transport)
    sockjs.send(cmd="connect", auth={"userId": 1, "token": "token-1"})
    connected = await sockjs.expect("connect")
    assert connected["transport"] == REPORTED[transport]
    assert connected["id"] in sockjs_node.node.sio.main.sockets

    sockjs.send(cmd="emit", event="join-study", args=[{"studyId": 7}], ack=1)
    joined = await sockjs.expect("ack", id=1)
    assert joined["args"] == [{"ok": True, "studyId": 7}]

    sio, sio_inbox = await socketio_client(sockjs_node.url, 2)
    try:
        assert await sio.call("join-study", {"studyId": 7}, timeout=5) == {"ok": True, "studyId": 7}

        # SockJS -> room: the Socket.IO member and the sender both get it
        sockjs.send(cmd="emit", event="message", args=[{"studyId": 7, "content": "from sockjs"}], ack=2)
        assert (await sockjs.expect("ack", id=2))["args"] == [{"ok": True}]
        got = await asyncio.wait_for(sio_inbox.get(), 10)
        assert got == {"content": "from sockjs", "user": 1}
        echo = await sockjs.expect("event", event="message")
        assert echo["args"][0] == {"content": "from sockjs", "user": 1}

        # Socket.IO -> room: the SockJS member gets it
        assert await sio.call("message", {"studyId": 7, "content": "from socket.io"}, timeout=5) == {"ok": True}
        got = await sockjs.expect("event", event="message")
        assert got["args"][0] == {"content": "from socket.io", "user": 2}
        assert isinstance(got["args"][-1], str)  # the recovery offset, as Socket.IO clients get it
        assert await asyncio.wait_for(sio_inbox.get(), 10) == {"content": "from socket.io", "user": 2}

        # a server-pushed notification to the user's personal room
        sockjs_node.node.sio.main.to("user:1").emit("notification", {"id": 5, "type": "TASK", "message": "hi"})
        note = await sockjs.expect("event", event="notification")
        assert note["args"][0] == {"id": 5, "type": "TASK", "message": "hi"}
    finally:
        await sio.disconnect()

    sockjs.send(cmd="close")
    assert (await sockjs.expect("disconnect"))["reason"] == "io client disconnect"


@pytest.mark.timeout(60)
async def test_sockjs_client_with_a_bad_token_gets_connect_error(sockjs_node: RunningNode, node_client: Any) -> None:
    sockjs = await node_client(sockjs_node.url + "/sockjs", "xhr-streaming")
    sockjs.send(cmd="connect", auth={"userId": 1, "token": "stolen"})
    refused = await sockjs.expect("connect_error")
    assert refused == {"type": "connect_error", "message": AUTH_FAILED}
    assert not sockjs.log.seen("connect")
    assert not sockjs_node.node.sio.main.sockets


@pytest.mark.timeout(60)
async def test_server_event_with_ack_reaches_sockjs_and_comes_back(
        sockjs_node: RunningNode, node_client: Any) -> None:
    sockjs = await node_client(sockjs_node.url + "/sockjs", "websocket")
    sockjs.send(cmd="connect", auth={"userId": 3, "token": "token-3"})
    connected = await sockjs.expect("connect")
    socket = sockjs_node.node.sio.main.sockets[connected["id"]]
    assert await socket.emit_with_ack("ping-me", {"n": 1}, timeout=10) == [{"received": "ping-me"}]


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]

BROWSER_ROUND_TRIP = """(transport) => new Promise((resolve, reject) => {
  const socket = new CoupSockJS("/sockjs", {auth: {userId: 21, token: "token-21"}, transports: [transport]});
  socket.on("connect_error", (err) => reject("connect_error: " + err.message));
  socket.on("connect", () => {
    socket.emit("join-study", {studyId: 9}, () => {
      socket.emit("message", {studyId: 9, content: "from the browser"});
    });
  });
  socket.on("message", (message) => resolve({message, transport: socket.transport}));
  setTimeout(() => reject("no message within 10 s"), 10000);
})"""


@pytest.fixture(scope="session")
def chromium() -> str:
    require(os.path.exists(CHROMIUM), "Debian chromium (/usr/bin/chromium)")
    return CHROMIUM


@pytest.mark.timeout(90)
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_browser_page_uses_the_vendored_bundle_and_helper(
        sockjs_node: RunningNode, chromium: str, transport: str) -> None:
    """A real Chromium loads /vendor/sockjs.min.js and /sockjs-coup.js from the node and talks to it."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.goto(sockjs_node.url + "/healthz")
            await page.add_script_tag(url="/vendor/sockjs.min.js")
            await page.add_script_tag(url="/sockjs-coup.js")
            result = await page.evaluate(BROWSER_ROUND_TRIP, transport)
        finally:
            await browser.close()
    assert result == {"message": {"content": "from the browser", "user": 21}, "transport": REPORTED[transport]}


@pytest.mark.timeout(60)
async def test_sockjs_client_reconnects_and_gets_what_it_missed(sockjs_node: RunningNode, node_client: Any) -> None:
    """A lost connection is retried by static/sockjs-coup.js with {pid, offset}: same socket id,
    same rooms, and the broadcast sent while it was away (connection state recovery)."""
    nsp = sockjs_node.node.sio.main
    gone = asyncio.Event()

    async def on_disconnect(socket: Any, reason: str) -> None:
        gone.set()

    nsp.on_disconnect(on_disconnect)
    sockjs = await node_client(sockjs_node.url + "/sockjs", "websocket")
    sockjs.send(cmd="connect", auth={"userId": 31, "token": "token-31"}, reconnection=True)
    sid = (await sockjs.expect("connect"))["id"]
    sockjs.send(cmd="emit", event="join-study", args=[{"studyId": 12}], ack=1)
    await sockjs.expect("ack", id=1)
    nsp.to("study:12").emit("message", {"n": 1})
    assert (await sockjs.expect("event", event="message"))["args"][0] == {"n": 1}

    nsp.sockets[sid].session.transport.bridge.session.handler.close()  # the network drops
    await asyncio.wait_for(gone.wait(), 10)
    nsp.to("study:12").emit("message", {"n": 2})  # sent while the client is away

    assert (await sockjs.expect("reconnect"))["id"] == sid
    missed = await sockjs.expect("event", event="message")
    assert missed["args"][0] == {"n": 2}
    assert nsp.sockets[sid].recovered
    assert "study:12" in nsp.sockets[sid].rooms


@pytest.mark.timeout(60)
async def test_timeout_emit_and_active_work_as_in_socketio_client(sockjs_node: RunningNode, node_client: Any) -> None:
    """The socket.io-client API the demo page uses over SockJS: timeout(ms).emit, `active`."""
    sockjs = await node_client(sockjs_node.url + "/sockjs", "websocket")
    sockjs.send(cmd="connect", auth={"userId": 41, "token": "token-41"}, reconnection=True)
    sid = (await sockjs.expect("connect"))["id"]
    sockjs.send(cmd="emit", event="join-study", args=[{"studyId": 5}], ack=1, timeout=5000)
    assert await sockjs.expect("ack", id=1) == {
        "type": "ack", "id": 1, "error": None, "args": [{"ok": True, "studyId": 5}]}
    sockjs.send(cmd="emit", event="nobody-answers", args=[], ack=2, timeout=300)
    assert (await sockjs.expect("ack", id=2))["error"] == "operation has timed out"

    nsp = sockjs_node.node.sio.main
    nsp.sockets[sid].session.transport.bridge.session.handler.close()  # the network drops
    dropped = await sockjs.expect("disconnect")
    assert (dropped["reason"], dropped["active"]) == ("transport close", True)  # it will come back
    sid = (await sockjs.expect("reconnect"))["id"]
    nsp.sockets[sid].disconnect()  # the server sends it away
    kicked = await sockjs.expect("disconnect")
    assert (kicked["reason"], kicked["active"]) == ("io server disconnect", False)
