"""Engine.IO v4 behaviour as the official engine.io-protocol suite checks it, and a little more.

Raw HTTP and a raw WebSocket against the conformance server's echo endpoint (/engine.io/);
the heartbeat is the suite's 300 ms / 200 ms, so a few of these take about half a second.
"""

from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
import pytest

from tests.conformance.client import PING_INTERVAL, PING_TIMEOUT, Polling, closed, recv_binary, recv_text
from tests.conformance.conftest import Running
from tests.waiting import eventually

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(20)]

HANDSHAKE_KEYS = {"sid", "upgrades", "pingInterval", "pingTimeout", "maxPayload"}


# ---------------------------------------------------------------------------- handshake


async def test_polling_handshake(conformance: Running) -> None:
    client = conformance.engineio()
    reply = await client.request("GET", client.url(with_sid=False))
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/plain")
    assert reply.text[0] == "0"
    info = json.loads(reply.text[1:])
    assert set(info) == HANDSHAKE_KEYS
    assert isinstance(info["sid"], str) and info["sid"]
    assert info["upgrades"] == ["websocket"]
    assert (info["pingInterval"], info["pingTimeout"], info["maxPayload"]) == (300, 200, 1_000_000)


async def test_websocket_handshake(conformance: Running) -> None:
    ws = await conformance.engineio().websocket()
    first = await recv_text(ws)
    assert first[0] == "0"
    info = json.loads(first[1:])
    assert set(info) == HANDSHAKE_KEYS
    assert info["upgrades"] == []
    assert (info["pingInterval"], info["pingTimeout"], info["maxPayload"]) == (300, 200, 1_000_000)
    await ws.close()


async def test_sids_are_unique(conformance: Running) -> None:
    sids = set()
    for _ in range(20):
        client = conformance.engineio()
        sids.add((await client.open())["sid"])
    assert len(sids) == 20


@pytest.mark.parametrize(("query", "code", "message"), [
    ("transport=polling", 5, "Unsupported protocol version"),
    ("EIO=abc&transport=polling", 5, "Unsupported protocol version"),
    ("EIO=3&transport=polling", 5, "Unsupported protocol version"),
    ("EIO=5&transport=polling", 5, "Unsupported protocol version"),
    ("EIO=4", 0, "Transport unknown"),
    ("EIO=4&transport=abc", 0, "Transport unknown"),
    ("EIO=4&transport=websocket", 3, "Bad request"),  # a plain GET, not an Upgrade request
    ("EIO=4&transport=polling&sid=nope", 1, "Session ID unknown"),
])
async def test_bad_requests_get_400_with_code_and_message(conformance: Running, query: str, code: int,
                                                          message: str) -> None:
    client = conformance.engineio()
    reply = await client.request("GET", client.base + "?" + query)
    assert reply.status == 400
    assert reply.headers["Content-Type"] == "application/json"
    assert reply.json() == {"code": code, "message": message}


@pytest.mark.parametrize(("method", "code"), [("POST", 2), ("PUT", 2), ("DELETE", 2), ("PATCH", 2)])
async def test_handshake_with_another_method_than_get_is_refused(conformance: Running, method: str,
                                                                 code: int) -> None:
    client = conformance.engineio()
    reply = await client.request(method, client.url(with_sid=False))
    assert reply.status == 400
    assert reply.json()["code"] == code


async def test_put_on_a_session_is_refused_and_the_session_lives(conformance: Running) -> None:
    client = conformance.engineio()
    await client.open()
    assert (await client.request("PUT", client.url(), "4x")).status == 400
    assert (await client.post("4still")).status == 200
    assert (await client.get()).text == "4still"


@pytest.mark.parametrize("query", ["transport=websocket", "EIO=abc&transport=websocket", "EIO=4",
                                   "EIO=4&transport=abc", "EIO=4&transport=websocket&sid=unknown"])
async def test_bad_websocket_requests_are_refused(conformance: Running, query: str) -> None:
    client = conformance.engineio()
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await conformance.http.ws_connect(client.ws_base + "?" + query)
    assert info.value.status == 400


async def test_unknown_sid_on_post(conformance: Running) -> None:
    client = conformance.engineio()
    client.sid = "does-not-exist"
    reply = await client.post("4hello")
    assert reply.status == 400 and reply.json() == {"code": 1, "message": "Session ID unknown"}


# ---------------------------------------------------------------------------- messages


@pytest.mark.parametrize("payload", [
    "4hello",
    "4test1\x1e4test2\x1e4test3",
    "4hello\x1ebAQIDBA==",
    "4€ü\x1e4",
])
async def test_polling_echo(conformance: Running, payload: str) -> None:
    client = conformance.engineio()
    await client.open()
    reply = await client.post(payload)
    assert (reply.status, reply.text) == (200, "ok")
    poll = await client.get()
    assert (poll.status, poll.text) == (200, payload)


async def test_websocket_echo_text_and_binary(conformance: Running) -> None:
    ws = await conformance.engineio().websocket()
    await recv_text(ws)
    await ws.send_str("4hello")
    assert await recv_text(ws) == "4hello"
    await ws.send_bytes(b"\x01\x02\x03\x04")
    assert await recv_binary(ws) == b"\x01\x02\x03\x04"
    await ws.close()


async def test_polling_get_waits_for_data(conformance: Running) -> None:
    client = conformance.engineio()
    await client.open()
    pending = await conformance.held_get(client)
    assert not pending.done()
    await client.post("4late")
    reply = await pending
    assert reply.text == "4late"


async def test_invalid_packet_over_polling_closes_the_session(conformance: Running,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    client = conformance.engineio()
    await client.open()
    with caplog.at_level(logging.INFO, logger="coup"):
        assert (await client.post("abc")).status == 400
    assert "parse error" in caplog.text
    reply = await client.get()
    assert reply.status == 400 and reply.json()["code"] == 1


async def test_invalid_packet_over_websocket_closes_the_session(conformance: Running) -> None:
    ws = await conformance.engineio().websocket()
    await recv_text(ws)
    await ws.send_str("abc")
    assert await closed(ws)


@pytest.mark.parametrize("packet", ["0", "5", "0{}"])
async def test_open_or_upgrade_from_a_client_on_an_open_session_is_invalid(conformance: Running,
                                                                          packet: str) -> None:
    ws = await conformance.engineio().websocket()
    await recv_text(ws)
    await ws.send_str(packet)
    assert await closed(ws)


async def test_duplicate_poll_closes_the_session(conformance: Running) -> None:
    client = conformance.engineio()
    await client.open()
    first = await conformance.held_get(client)
    second = await client.get()
    assert second.status in (400, 500)
    reply = await first
    assert (reply.status, reply.text) == (200, "1")
    assert (await client.get()).status == 400


# ---------------------------------------------------------------------------- heartbeat


async def test_polling_ping_pong(conformance: Running) -> None:
    client = conformance.engineio()
    await client.open()
    for _ in range(3):
        reply = await client.get()
        assert (reply.status, reply.text) == (200, "2")
        assert (await client.post("3")).status == 200


async def test_polling_ping_timeout_closes_the_session(conformance: Running) -> None:
    client = conformance.engineio()
    await client.open()
    await asyncio.sleep(PING_INTERVAL + PING_TIMEOUT + 0.05)  # the subject: no pong for longer than allowed
    reply = await client.get()
    assert reply.status == 400 and reply.json()["code"] == 1


async def test_websocket_ping_pong(conformance: Running) -> None:
    ws = await conformance.engineio().websocket()
    await recv_text(ws)
    for _ in range(3):
        assert await recv_text(ws, skip_pings=False) == "2"
        await ws.send_str("3")
    assert not ws.closed
    await ws.close()


async def test_websocket_ping_timeout_closes_promptly(conformance: Running,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    ws = await conformance.engineio().websocket()
    await recv_text(ws)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with caplog.at_level(logging.INFO, logger="coup.engine.session"):
        assert await recv_text(ws, skip_pings=False) == "2"
        assert await closed(ws)
    # closed one pingTimeout after the ping, not after a further interval
    assert loop.time() - start < PING_INTERVAL + PING_TIMEOUT + PING_INTERVAL
    assert "ping timeout" in caplog.text


async def test_client_ping_is_answered(conformance: Running) -> None:
    """EIO 4 clients do not ping, but the reference answers one and so do we."""
    ws = await conformance.engineio().websocket()
    await recv_text(ws)
    await ws.send_str("2")
    assert await recv_text(ws) == "3"
    await ws.close()


# ---------------------------------------------------------------------------- close


async def test_polling_close_answers_the_pending_get_with_noop(conformance: Running) -> None:
    client = conformance.engineio()
    await client.open()
    pending = await conformance.held_get(client)
    assert (await client.post("1")).status == 200
    reply = await asyncio.wait_for(pending, 1.0)  # at once, not after the heartbeat gives up
    assert (reply.status, reply.text) == (200, "6")
    assert (await client.get()).status == 400


async def test_websocket_close_packet(conformance: Running) -> None:
    ws = await conformance.engineio().websocket()
    await recv_text(ws)
    await ws.send_str("1")
    assert await closed(ws)


# ---------------------------------------------------------------------------- upgrade


async def probed(client: Polling) -> aiohttp.ClientWebSocketResponse:
    """A WebSocket for the client's polling session that has answered the probe (upgrading)."""
    ws = await client.websocket()
    await ws.send_str("2probe")
    assert await recv_text(ws) == "3probe"
    return ws


async def assert_echo(ws: aiohttp.ClientWebSocketResponse, message: str) -> None:
    await ws.send_str(message)
    assert await recv_text(ws) == message


async def test_upgrade_from_polling(conformance: Running) -> None:
    client = conformance.engineio()
    await client.open()
    ws = await probed(client)
    poll = await client.get()  # answered at once while the upgrade is under way
    assert (poll.status, poll.text) == (200, "6")
    await client.post("4queued")  # echoed onto the polling queue, which nobody fetches now
    await ws.send_str("5")
    assert await recv_text(ws) == "4queued"  # moved over to the WebSocket, not lost
    await assert_echo(ws, "4hello")
    await ws.close()


async def test_packets_queued_before_the_probe_are_delivered_once(conformance: Running) -> None:
    client = conformance.engineio()
    await client.open()
    await client.post("4a\x1e4b")
    ws = await probed(client)
    over_polling = (await client.get()).text.split("\x1e")
    await ws.send_str("5")
    await ws.send_str("4end")
    over_ws = []
    while (text := await recv_text(ws)) != "4end":
        over_ws.append(text)
    assert [p for p in over_polling if p != "6"] + over_ws == ["4a", "4b"]
    await ws.close()


async def test_pending_get_is_answered_with_noop_on_probe(conformance: Running) -> None:
    client = conformance.engineio()
    await client.open()
    pending = await conformance.held_get(client)
    ws = await probed(client)
    reply = await asyncio.wait_for(pending, 1.0)
    assert reply.text == "6"
    await ws.close()


async def test_polling_is_refused_after_upgrade(conformance: Running) -> None:
    client = conformance.engineio()
    await client.open()
    ws = await client.websocket()
    await ws.send_str("2probe")  # probe and upgrade back to back, as the official suite sends them
    await ws.send_str("5")
    assert await recv_text(ws) == "3probe"
    assert (await client.get()).status == 400
    assert (await client.post("4x")).status == 400
    await assert_echo(ws, "4hello")  # the session itself carries on
    await ws.close()


@pytest.mark.parametrize("upgrade_first", [True, False], ids=["after-upgrade", "while-upgrading"])
async def test_second_websocket_is_accepted_then_closed(conformance: Running, upgrade_first: bool) -> None:
    client = conformance.engineio()
    await client.open()
    ws = await probed(client)
    if upgrade_first:
        await ws.send_str("5")
    second = await client.websocket()  # the handshake succeeds, then the socket is closed
    assert await closed(second)
    if not upgrade_first:
        await ws.send_str("5")
    await assert_echo(ws, "4ok")
    await ws.close()


async def test_bad_probe_leaves_the_session_on_polling(conformance: Running) -> None:
    client = conformance.engineio()
    await client.open()
    ws = await client.websocket()
    await ws.send_str("4not-a-probe")
    assert await closed(ws)
    await client.post("4still-polling")
    assert (await client.get()).text == "4still-polling"


async def test_websocket_that_never_sends_upgrade_leaves_polling_working(conformance: Running) -> None:
    client = conformance.engineio()
    await client.open()
    ws = await probed(client)
    session = conformance.server.echo.sessions[client.sid]
    await ws.close()  # gone before "5"
    await eventually(lambda: session.upgrading is None, "the server saw the probe's WebSocket go")
    await client.post("4back")
    records: list[str] = []
    while "4back" not in records:
        records += (await client.get()).text.split("\x1e")
    assert set(records) <= {"2", "4back"}


# ---------------------------------------------------------------------------- CORS on the suite server


async def test_cors_headers_for_a_browser_origin(conformance: Running) -> None:
    client = conformance.engineio()
    reply = await client.request("GET", client.url(with_sid=False), headers={"Origin": "http://example.com"})
    assert reply.status == 200
    assert reply.headers["Access-Control-Allow-Origin"] == "http://example.com"
    assert reply.headers["Access-Control-Allow-Credentials"] == "true"
    preflight = await client.request("OPTIONS", client.url(with_sid=False), headers={
        "Origin": "http://example.com", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "http://example.com"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert preflight.headers["Access-Control-Allow-Headers"] == "content-type"


async def test_messages_arrive_in_order_across_polls(conformance: Running) -> None:
    client = conformance.engineio()
    await client.open()
    sent = [f"4m{i}" for i in range(50)]
    for chunk in range(0, 50, 10):
        await client.post("\x1e".join(sent[chunk:chunk + 10]))
    received: list[str] = []
    while len(received) < 50:
        reply = await client.get()
        received.extend(p for p in reply.text.split("\x1e") if p != "2")
    assert received == sent
