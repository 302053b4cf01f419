"""Socket.IO v5 behaviour as the official socket.io-protocol suite checks it, over both transports.

Raw frames and HTTP bodies against the conformance server's /socket.io/ endpoint, whose
handlers are the suite's: "auth" on connect, "message" -> "message-back", "message-with-ack"
acknowledged with its own arguments.
"""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from tests.conformance.client import closed, open_socketio, recv_binary, recv_text
from tests.conformance.conftest import Running

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(20)]

PH0 = '{"_placeholder":true,"num":0}'
PH1 = '{"_placeholder":true,"num":1}'


async def test_engineio_layer_is_the_same_at_socket_io(conformance: Running) -> None:
    client = conformance.socketio()
    info = await client.open()
    assert info["upgrades"] == ["websocket"] and info["pingInterval"] == 300
    for _ in range(2):
        assert (await client.get()).text == "2"
        await client.post("3")


# ---------------------------------------------------------------------------- connect


@pytest.mark.parametrize(("connect", "reply_prefix", "auth_event"), [
    ("40", "40", '42["auth",{}]'),
    ('40{"token":"123"}', "40", '42["auth",{"token":"123"}]'),
    ("40/custom,", "40/custom,", '42/custom,["auth",{}]'),
    ("40/custom", "40/custom,", '42/custom,["auth",{}]'),
    ('40/custom,{"token":"abc"}', "40/custom,", '42/custom,["auth",{"token":"abc"}]'),
])
async def test_connect_to_a_namespace(conformance: Running, connect: str, reply_prefix: str,
                                      auth_event: str) -> None:
    ws = await conformance.socketio().websocket(with_sid=False)
    await recv_text(ws)
    await ws.send_str(connect)
    reply = await recv_text(ws)
    assert reply.startswith(reply_prefix)
    handshake = json.loads(reply[len(reply_prefix):])
    assert set(handshake) == {"sid"} and isinstance(handshake["sid"], str)  # recovery off: no pid
    assert await recv_text(ws) == auth_event
    await ws.close()


async def test_socket_ids_differ_from_the_engine_sid(conformance: Running) -> None:
    client = conformance.socketio()
    ws = await client.websocket(with_sid=False)
    engine_sid = json.loads((await recv_text(ws))[1:])["sid"]
    await ws.send_str("40")
    socket_sid = json.loads((await recv_text(ws))[2:])["sid"]
    assert await recv_text(ws) == '42["auth",{}]'
    await ws.send_str("40/custom,")
    custom_sid = json.loads((await recv_text(ws))[len("40/custom,"):])["sid"]
    assert len({engine_sid, socket_sid, custom_sid}) == 3
    await ws.close()


async def test_unknown_namespace_gets_connect_error(conformance: Running) -> None:
    ws = await conformance.socketio().websocket(with_sid=False)
    await recv_text(ws)
    await ws.send_str("40/random")
    assert await recv_text(ws) == '44/random,{"message":"Invalid namespace"}'
    # the connection stays usable for a valid namespace
    await ws.send_str("40")
    assert (await recv_text(ws)).startswith("40{")
    await ws.close()


@pytest.mark.parametrize("handshake", ["4abc", "40[]", '40"x"', "40/custom,[1]"])
async def test_invalid_handshake_closes(conformance: Running, handshake: str) -> None:
    ws = await conformance.socketio().websocket(with_sid=False)
    await recv_text(ws)
    await ws.send_str(handshake)
    assert await closed(ws)


async def test_no_handshake_closes_after_the_connect_timeout(conformance: Running,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """The client answers every ping, so only the connect timeout (1 s here) can end it."""
    ws = await conformance.socketio().websocket(with_sid=False)
    await recv_text(ws)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with caplog.at_level(logging.INFO, logger="coup"):
        while True:
            msg = await ws.receive(timeout=3)
            if msg.data == "2":
                await ws.send_str("3")
                continue
            break
    assert ws.closed or msg.type.name in ("CLOSE", "CLOSED", "CLOSING")
    assert loop.time() - start >= 0.9
    assert "no namespace connected" in caplog.text


async def test_connected_client_is_not_closed_by_the_connect_timeout(conformance: Running) -> None:
    ws = await open_socketio(conformance.socketio())
    for _ in range(5):  # 1.5 s, past the 1 s connect timeout
        assert await recv_text(ws, skip_pings=False) == "2"
        await ws.send_str("3")
    await ws.send_str('42["message","still here"]')
    assert await recv_text(ws) == '42["message-back","still here"]'
    await ws.close()


# ---------------------------------------------------------------------------- disconnect


async def test_disconnect_from_main_namespace_keeps_the_connection(conformance: Running) -> None:
    ws = await open_socketio(conformance.socketio())
    await ws.send_str("41")
    assert await recv_text(ws, skip_pings=False) == "2"  # only the next ping: no reply, no close
    await ws.send_str("3")
    await ws.send_str("40")  # and the namespace can be joined again
    assert (await recv_text(ws)).startswith("40{")
    await ws.close()


async def test_disconnect_from_custom_namespace_only(conformance: Running) -> None:
    ws = await open_socketio(conformance.socketio())
    await ws.send_str("40/custom")
    assert (await recv_text(ws)).startswith("40/custom,")
    assert await recv_text(ws) == '42/custom,["auth",{}]'
    await ws.send_str("41/custom")
    await ws.send_str('42["message","message to main namespace"]')
    assert await recv_text(ws) == '42["message-back","message to main namespace"]'
    await ws.close()


async def test_event_for_a_namespace_not_joined_closes(conformance: Running) -> None:
    ws = await open_socketio(conformance.socketio())
    await ws.send_str('42/custom,["message","x"]')
    assert await closed(ws)


async def test_connect_error_from_a_client_closes(conformance: Running) -> None:
    ws = await open_socketio(conformance.socketio())
    await ws.send_str('44{"message":"nope"}')
    assert await closed(ws)


async def test_second_connect_to_a_joined_namespace_closes(conformance: Running) -> None:
    ws = await open_socketio(conformance.socketio())
    await ws.send_str("40")
    assert await closed(ws)


# ---------------------------------------------------------------------------- messages


async def test_plain_text_event(conformance: Running) -> None:
    ws = await open_socketio(conformance.socketio())
    await ws.send_str('42["message",1,"2",{"3":[true]}]')
    assert await recv_text(ws) == '42["message-back",1,"2",{"3":[true]}]'
    await ws.close()


async def test_event_with_ack(conformance: Running) -> None:
    ws = await open_socketio(conformance.socketio())
    await ws.send_str('42456["message-with-ack",1,"2",{"3":[false]}]')
    assert await recv_text(ws) == '43456[1,"2",{"3":[false]}]'
    await ws.close()


@pytest.mark.parametrize(("sent", "answer"), [
    (f'452-["message",{PH0},{PH1}]', f'452-["message-back",{PH0},{PH1}]'),
    (f'452-789["message-with-ack",{PH0},{PH1}]', f"462-789[{PH0},{PH1}]"),
], ids=["binary event", "binary event with ack gets a binary ack"])
async def test_binary_attachments_round_trip(conformance: Running, sent: str, answer: str) -> None:
    ws = await open_socketio(conformance.socketio())
    await ws.send_str(sent)
    await ws.send_bytes(b"\x01\x02\x03")
    await ws.send_bytes(b"\x04\x05\x06")
    assert await recv_text(ws) == answer
    assert await recv_binary(ws) == b"\x01\x02\x03"
    assert await recv_binary(ws) == b"\x04\x05\x06"
    await ws.close()


async def test_events_are_answered_in_order(conformance: Running) -> None:
    ws = await open_socketio(conformance.socketio())
    for i in range(30):
        await ws.send_str(f'42["message",{i}]')
    for i in range(30):
        assert await recv_text(ws) == f'42["message-back",{i}]'
    await ws.close()


async def test_event_nobody_listens_to_is_ignored(conformance: Running) -> None:
    ws = await open_socketio(conformance.socketio())
    await ws.send_str('42["nobody-listens",1]')
    await ws.send_str('42["message","after"]')
    assert await recv_text(ws) == '42["message-back","after"]'
    await ws.close()


@pytest.mark.parametrize("packet", [
    "4abc",                                           # unknown packet type
    "42{}",                                           # payload not an array
    '42abc["message-with-ack",1,"2",{"3":[false]}]',  # invalid ack id
    '42["disconnect"]',                               # reserved event name
    "42[]",                                           # no event name
    '42["message",NaN]',                              # not JSON
    '451-["message",{"_placeholder":true,"num":3}]',  # header fine; the placeholder is checked with the data
])
async def test_invalid_packets_close_the_connection(conformance: Running, packet: str,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    ws = await open_socketio(conformance.socketio())
    with caplog.at_level(logging.INFO, logger="coup.engine.session"):
        await ws.send_str(packet)
        if packet.startswith("45"):
            await ws.send_bytes(b"\x00")
        assert await closed(ws)
    assert "parse error" in caplog.text


async def test_binary_message_without_a_packet_closes(conformance: Running) -> None:
    ws = await open_socketio(conformance.socketio())
    await ws.send_bytes(b"\x01\x02")
    assert await closed(ws)


async def test_text_instead_of_an_expected_attachment_closes(conformance: Running) -> None:
    ws = await open_socketio(conformance.socketio())
    await ws.send_str(f'451-["message",{PH0}]')
    await ws.send_str('42["message","x"]')
    assert await closed(ws)


# ---------------------------------------------------------------------------- over HTTP long-polling


async def test_whole_exchange_over_polling(conformance: Running) -> None:
    client = conformance.socketio()
    await client.open()
    assert (await client.post('40{"token":"t"}')).status == 200
    records = (await client.get()).text.split("\x1e")
    assert records[0].startswith("40{") and set(json.loads(records[0][2:])) == {"sid"}
    if len(records) == 1:  # the auth event may come in the next response
        records += (await client.get()).text.split("\x1e")
    assert records[1] == '42["auth",{"token":"t"}]'
    await client.post('42["message","a"]\x1e42456["message-with-ack","b"]')
    got: list[str] = []
    while len(got) < 2:
        got += [r for r in (await client.get()).text.split("\x1e") if r != "2"]
    assert got == ['42["message-back","a"]', '43456["b"]']


async def test_binary_over_polling_uses_base64_records(conformance: Running) -> None:
    client = conformance.socketio()
    await client.open()
    await client.post("40")
    await client.get()
    reply = await client.post(f'452-["message",{PH0},{PH1}]\x1ebAQID\x1ebBAUG')
    assert reply.status == 200
    got: list[str] = []
    while len(got) < 4:
        got += [r for r in (await client.get()).text.split("\x1e") if r not in ("2", '42["auth",{}]')]
    assert got[:3] == [f'452-["message-back",{PH0},{PH1}]', "bAQID", "bBAUG"]


async def test_invalid_packet_over_polling_closes_the_session(conformance: Running) -> None:
    client = conformance.socketio()
    await client.open()
    await client.post("40")
    assert (await client.post("42{}")).status == 200  # valid Engine.IO, invalid Socket.IO
    reply = await client.get()
    # the session is gone: what was queued for it is dropped and the next request is refused
    assert (reply.status, reply.json()["code"]) == (400, 1)


async def test_upgrade_carries_the_socket_over(conformance: Running) -> None:
    client = conformance.socketio()
    await client.open()
    await client.post("40")
    first = (await client.get()).text
    assert first.startswith("40{")
    ws = await client.websocket()
    await ws.send_str("2probe")
    assert await recv_text(ws) == "3probe"
    await ws.send_str("5")
    await ws.send_str('42["message","over websocket"]')
    texts = []
    while not texts or texts[-1] != '42["message-back","over websocket"]':
        texts.append(await recv_text(ws))
    assert texts[-1] == '42["message-back","over websocket"]'
    await ws.close()
