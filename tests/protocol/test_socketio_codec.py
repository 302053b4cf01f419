"""Socket.IO v5 packets: one table of wire examples feeds the encoder and the decoder.

Rows come from the socket.io-protocol README (packet encoding section and sample session)
and from what the official test suite sends. Binary rows are decoded the way they arrive:
the text message first, then each attachment on its own, and the decoder must hold the
packet back until the last one. Each row is also carried through RFC 6455 frames fed one
byte at a time, so the whole inbound path sees its input in the smallest pieces.
"""

from __future__ import annotations

from typing import Any

import pytest

from coup.protocol import jsonutil
from coup.protocol.errors import DecodeError, EncodeError
from coup.protocol.socketio import (
    MAX_ACK_ID,
    EncodedPacket,
    SocketDecoder,
    SocketPacket,
    SocketPacketType,
    decode_text,
    encode,
    encode_event,
    stamp_offset,
)
from coup.protocol.websocket import BinaryMessage, FrameReader, TextMessage
from tests.wsclient import binary, text

T = SocketPacketType


def ph(num: int) -> dict[str, Any]:
    return {"_placeholder": True, "num": num}


B1234 = b"\x01\x02\x03\x04"

#: (wire text, attachments, packet)
TABLE: list[tuple[str, tuple[bytes, ...], SocketPacket]] = [
    # README: connection to a namespace
    ("0", (), SocketPacket(T.CONNECT)),
    ('0/admin,{"sid":"oSO0OpakMV_3jnilAAAA"}', (), SocketPacket(T.CONNECT, "/admin", {"sid": "oSO0OpakMV_3jnilAAAA"})),
    ('4{"message":"Not authorized"}', (), SocketPacket(T.CONNECT_ERROR, "/", {"message": "Not authorized"})),
    # README: sending and receiving data
    ('2["foo"]', (), SocketPacket(T.EVENT, "/", ["foo"])),
    ('2/admin,["bar"]', (), SocketPacket(T.EVENT, "/admin", ["bar"])),
    ('51-["baz",{"_placeholder":true,"num":0}]', (B1234,), SocketPacket(T.BINARY_EVENT, "/", ["baz", B1234])),
    ('52-/admin,["baz",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]', (b"\x01\x02", b"\x03\x04"),
     SocketPacket(T.BINARY_EVENT, "/admin", ["baz", b"\x01\x02", b"\x03\x04"])),
    # README: acknowledgements
    ('212["foo"]', (), SocketPacket(T.EVENT, "/", ["foo"], 12)),
    ('3/admin,13["bar"]', (), SocketPacket(T.ACK, "/admin", ["bar"], 13)),
    ('61-15["bar",{"_placeholder":true,"num":0}]', (B1234,), SocketPacket(T.BINARY_ACK, "/", ["bar", B1234], 15)),
    ("30[]", (), SocketPacket(T.ACK, "/", [], 0)),
    # README: disconnection
    ("1", (), SocketPacket(T.DISCONNECT)),
    ("1/admin,", (), SocketPacket(T.DISCONNECT, "/admin")),
    # README: sample session
    ("0/admin,", (), SocketPacket(T.CONNECT, "/admin")),
    ('0{"sid":"wZX3oN0bSVIhsaknAAAI"}', (), SocketPacket(T.CONNECT, "/", {"sid": "wZX3oN0bSVIhsaknAAAI"})),
    ('0/admin,{"sid":"-G5j-67EZFp-q59rADQM"}', (), SocketPacket(T.CONNECT, "/admin", {"sid": "-G5j-67EZFp-q59rADQM"})),
    ('2["hey","Jude"]', (), SocketPacket(T.EVENT, "/", ["hey", "Jude"])),
    ('2/admin,1["tellme"]', (), SocketPacket(T.EVENT, "/admin", ["tellme"], 1)),
    ('61-/admin,1[{"_placeholder":true,"num":0}]', (b"\xff",), SocketPacket(T.BINARY_ACK, "/admin", [b"\xff"], 1)),
    # the official suite
    ('0{"token":"123"}', (), SocketPacket(T.CONNECT, "/", {"token": "123"})),
    ('0/custom,{"token":"abc"}', (), SocketPacket(T.CONNECT, "/custom", {"token": "abc"})),
    ('4/random,{"message":"Invalid namespace"}', (), SocketPacket(T.CONNECT_ERROR, "/random",
                                                               {"message": "Invalid namespace"})),
    ('2["auth",{}]', (), SocketPacket(T.EVENT, "/", ["auth", {}])),
    ('2["message",1,"2",{"3":[true]}]', (), SocketPacket(T.EVENT, "/", ["message", 1, "2", {"3": [True]}])),
    ('2456["message-with-ack",1,"2",{"3":[false]}]', (),
     SocketPacket(T.EVENT, "/", ["message-with-ack", 1, "2", {"3": [False]}], 456)),
    ('3456[1,"2",{"3":[false]}]', (), SocketPacket(T.ACK, "/", [1, "2", {"3": [False]}], 456)),
    ('52-["message",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]', (b"\x01\x02\x03", b"\x04\x05\x06"),
     SocketPacket(T.BINARY_EVENT, "/", ["message", b"\x01\x02\x03", b"\x04\x05\x06"])),
    ('62-789[{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]', (b"\x01\x02\x03", b"\x04\x05\x06"),
     SocketPacket(T.BINARY_ACK, "/", [b"\x01\x02\x03", b"\x04\x05\x06"], 789)),
    # JSON as JSON.stringify writes it: compact, raw UTF-8, nested binary
    ('2["€",{"a":"ü","b":null,"c":-1.5}]', (), SocketPacket(T.EVENT, "/", ["€", {"a": "ü", "b": None, "c": -1.5}])),
    ('2[7,"numeric event names are allowed"]', (), SocketPacket(T.EVENT, "/", [7, "numeric event names are allowed"])),
    ('51-["deep",{"x":[{"y":{"_placeholder":true,"num":0}}]}]', (b"",),
     SocketPacket(T.BINARY_EVENT, "/", ["deep", {"x": [{"y": b""}]}])),
    (f'2{MAX_ACK_ID}["x"]', (), SocketPacket(T.EVENT, "/", ["x"], MAX_ACK_ID)),
]
IDS = [row[0][:40] for row in TABLE]


@pytest.mark.parametrize(("wire", "attachments", "packet"), TABLE, ids=IDS)
def test_table_encodes(wire: str, attachments: tuple[bytes, ...], packet: SocketPacket) -> None:
    assert encode(packet) == EncodedPacket(wire, attachments)


@pytest.mark.parametrize(("wire", "attachments", "packet"), TABLE, ids=IDS)
def test_table_decodes_with_attachments_one_by_one(wire: str, attachments: tuple[bytes, ...],
                                                   packet: SocketPacket) -> None:
    decoder = SocketDecoder()
    result = decoder.feed_text(wire)
    for data in attachments:
        assert result is None and decoder.awaiting_attachments
        result = decoder.feed_binary(data)
    assert result == packet
    assert not decoder.awaiting_attachments
    # the decoder is ready for the next packet of the same connection
    assert decoder.feed_text('2["next"]') == SocketPacket(T.EVENT, "/", ["next"])


@pytest.mark.parametrize(("wire", "attachments", "packet"), TABLE, ids=IDS)
def test_table_through_websocket_frames_byte_by_byte(wire: str, attachments: tuple[bytes, ...],
                                                     packet: SocketPacket) -> None:
    """Engine.IO MESSAGE frames ("4" + text, then raw binary frames), one byte per read."""
    stream = text("4" + wire) + b"".join(binary(a) for a in attachments)
    reader = FrameReader(max_message=1_000_000)
    decoder = SocketDecoder()
    decoded = []
    for i in range(len(stream)):
        for event in reader.feed(stream[i:i + 1]):
            if isinstance(event, TextMessage):
                assert event.text[0] == "4"
                result = decoder.feed_text(event.text[1:])
            else:
                assert isinstance(event, BinaryMessage)
                result = decoder.feed_binary(event.data)
            if result is not None:
                decoded.append(result)
    assert decoded == [packet]


def test_event_with_bytes_is_sent_as_binary_event() -> None:
    sent = SocketPacket(T.EVENT, "/", ["baz", B1234])
    assert encode(sent) == EncodedPacket('51-["baz",{"_placeholder":true,"num":0}]', (B1234,))
    ack = SocketPacket(T.ACK, "/", ["bar", bytearray(B1234)], 15)
    assert encode(ack) == EncodedPacket('61-15["bar",{"_placeholder":true,"num":0}]', (B1234,))
    # and a BINARY_* packet without bytes goes out as the plain type
    assert encode(SocketPacket(T.BINARY_EVENT, "/", ["x"])).text == '2["x"]'
    assert encode(SocketPacket(T.BINARY_ACK, "/", [], 3)).text == "33[]"


def test_tuples_and_memoryviews_are_encoded_like_lists_and_bytes() -> None:
    packet = SocketPacket(T.EVENT, "/", ("a", (1, memoryview(b"\x09"))))
    assert encode(packet) == EncodedPacket('51-["a",[1,{"_placeholder":true,"num":0}]]', (b"\x09",))


@pytest.mark.parametrize("args", [
    ["message", 1, "2", {"3": [True]}], ["hey", "Jude"], ["€"], ["bin", b"\x00"], [1, 2],
])
@pytest.mark.parametrize("namespace", ["/", "/admin"])
@pytest.mark.parametrize("ack_id", [None, 0, 12])
def test_encode_event_shortcut_matches_encode(args: list[Any], namespace: str, ack_id: int | None) -> None:
    assert encode_event(namespace, args, ack_id) == encode(SocketPacket(T.EVENT, namespace, list(args), ack_id))


@pytest.mark.parametrize(("wire", "offset", "stamped"), [
    ('2["message",{"id":1}]', 17, '2["message",{"id":1},"17"]'),
    ('2["a"]', "1733300000000001.0.42", '2["a","1733300000000001.0.42"]'),
    ('2/admin,["a",1]', 7, '2/admin,["a",1,"7"]'),
    ('51-["file",{"_placeholder":true,"num":0}]', 3, '51-["file",{"_placeholder":true,"num":0},"3"]'),
])
def test_a_recovery_offset_is_stamped_as_the_events_last_argument(wire: str, offset: int | str, stamped: str) -> None:
    assert stamp_offset(wire, offset) == stamped
    # the same text the encoder gives the packet with the offset appended
    decoder = SocketDecoder(max_attachments=1)
    packet = decoder.feed_text(wire)
    if packet is None:
        packet = decoder.feed_binary(b"x")
    assert packet is not None
    assert encode(SocketPacket(packet.type, packet.namespace, [*packet.data, str(offset)], packet.id)).text == stamped


@pytest.mark.parametrize(("wire", "packet"), [
    ("0/custom", SocketPacket(T.CONNECT, "/custom")),           # the suite connects without the comma
    ("1/custom", SocketPacket(T.DISCONNECT, "/custom")),
    ('2/a/b,["x"]', SocketPacket(T.EVENT, "/a/b", ["x"])),
    ('4"refused"', SocketPacket(T.CONNECT_ERROR, "/", "refused")),   # v4-era string form, still valid
    ('50-["x"]', SocketPacket(T.BINARY_EVENT, "/", ["x"])),          # binary type with no attachment
])
def test_decoder_accepts_other_valid_forms(wire: str, packet: SocketPacket) -> None:
    assert SocketDecoder().feed_text(wire) == packet


#: (wire, why) for text packets that must be refused; each one alone closes a connection
MALFORMED = [
    ("", "empty"),
    ("abc", "unknown type (the suite's 4abc)"),
    ("7", "unknown type"),
    ("8[]", "unknown type"),
    ("2{}", "EVENT payload not an array (the suite's 42{})"),
    ('2abc["message-with-ack",1,"2",{"3":[false]}]', "invalid ack id (the suite's)"),
    ("2", "EVENT without payload"),
    ("2[]", "EVENT with empty array"),
    ('2["connect"]', "reserved event name"),
    ('2["connect_error"]', "reserved event name"),
    ('2["disconnect"]', "reserved event name"),
    ('2["disconnecting"]', "reserved event name"),
    ('2["newListener"]', "reserved event name"),
    ('2["removeListener"]', "reserved event name"),
    ("2[true]", "boolean event name"),
    ("2[null]", "null event name"),
    ('2[{"a":1}]', "object event name"),
    ('2[["x"]]', "array event name"),
    ('2"x"', "string payload"),
    ('2["x",NaN]', "NaN"),
    ('2["x",Infinity]', "Infinity"),
    ('2["x",-Infinity]', "-Infinity"),
    ('2["x",1e999]', "number overflowing to infinity"),
    ('2["x",' + "9" * 5000 + "]", "integer too long to parse"),
    ('2["x",' + "[" * 100_000 + "]" * 100_000 + "]", "nesting deeper than the parser allows"),
    ('2["x"', "truncated JSON"),
    ('2["x"]]', "trailing data"),
    ("2['x']", "single quotes"),
    ('2["\\u12', "truncated escape"),
    ("3", "ACK without payload"),
    ('3["x"]', "ACK without id"),
    ("33{}", "ACK payload not an array"),
    ("33null", "ACK with null"),
    ("0[]", "CONNECT payload not an object"),
    ('0"x"', "CONNECT payload a string"),
    ("0null", "CONNECT payload null"),
    ("01{}", "CONNECT with an ack id"),
    ("1{}", "DISCONNECT with payload"),
    ("11", "DISCONNECT with an ack id"),
    ("4", "CONNECT_ERROR without payload"),
    ("4[1]", "CONNECT_ERROR payload an array"),
    ("41{}", "CONNECT_ERROR with an ack id"),
    ("2" + "1" * 17 + '["x"]', "ack id with too many digits"),
    (f'2{MAX_ACK_ID + 1}["x"]', "ack id above 2**53-1"),
    ("2/" + "a" * 300 + ',["x"]', "namespace too long"),
    ('5-["x"]', "attachment count missing"),
    ('5a-["x"]', "attachment count not a number"),
    ('51["x"]', "attachment count without dash"),
    ('5\uff11-["x"]', "attachment count with a non-ASCII digit (fullwidth 1)"),
    ('51234567-["x"]', "attachment count too long"),
    ('511-["x"' + ',{"_placeholder":true,"num":0}' * 11 + "]", "more attachments than allowed (10)"),
    ('61-["x"]', "BINARY_ACK without id"),
]


@pytest.mark.parametrize(("wire", "why"), MALFORMED, ids=[why for _, why in MALFORMED])
def test_malformed_text_packets_raise_decode_error(wire: str, why: str) -> None:
    decoder = SocketDecoder(max_attachments=10)
    with pytest.raises(DecodeError):
        decoder.feed_text(wire)
    # a failed decoder stays failed: the connection must be closed, not resynchronised
    with pytest.raises(DecodeError):
        decoder.feed_text('2["ok"]')


@pytest.mark.parametrize(("header", "attachments", "why"), [
    ('51-["x",{"_placeholder":true,"num":1}]', [b"a"], "placeholder index beyond the attachments"),
    ('51-["x",{"_placeholder":true,"num":-1}]', [b"a"], "negative placeholder index"),
    ('51-["x",{"_placeholder":true,"num":"0"}]', [b"a"], "placeholder index a string"),
    ('51-["x",{"_placeholder":true,"num":true}]', [b"a"], "placeholder index a boolean"),
    ('51-["x",{"_placeholder":true,"num":0.5}]', [b"a"], "placeholder index a float"),
    ('52-["x",{"_placeholder":true,"num":0}]', [b"a", b"b"], "attachment without a placeholder"),
    ('51-["x",{"_placeholder":true}]', [b"a"], "placeholder without num"),
    ('51-["x",{"_placeholder":true,"num":0},{"_placeholder":true,"num":0}]', [b"a"], "fine: one attachment twice"),
])
def test_bad_placeholders(header: str, attachments: list[bytes], why: str) -> None:
    decoder = SocketDecoder()
    assert decoder.feed_text(header) is None
    if why.startswith("fine"):
        assert decoder.feed_binary(attachments[0]) == SocketPacket(T.BINARY_EVENT, "/", ["x", b"a", b"a"])
        return
    with pytest.raises(DecodeError):
        for data in attachments:
            decoder.feed_binary(data)


def test_attachment_limit_is_configurable() -> None:
    header = '53-["x"' + "".join(f',{{"_placeholder":true,"num":{i}}}' for i in range(3)) + "]"
    assert SocketDecoder(max_attachments=3).feed_text(header) is None
    with pytest.raises(DecodeError):
        SocketDecoder(max_attachments=2).feed_text(header)


def test_text_while_attachments_are_expected_is_refused() -> None:
    decoder = SocketDecoder()
    decoder.feed_text('51-["x",{"_placeholder":true,"num":0}]')
    with pytest.raises(DecodeError):
        decoder.feed_text('2["y"]')


def test_binary_without_announcing_packet_is_refused() -> None:
    decoder = SocketDecoder()
    with pytest.raises(DecodeError):
        decoder.feed_binary(b"\x01")
    with pytest.raises(DecodeError):
        decoder.feed_text('2["x"]')


def test_decode_text_refuses_packets_that_need_attachments() -> None:
    assert decode_text('2["x"]') == SocketPacket(T.EVENT, "/", ["x"])
    with pytest.raises(DecodeError):
        decode_text('51-["x",{"_placeholder":true,"num":0}]')


@pytest.mark.parametrize("kwargs", [
    {"type": T.EVENT, "namespace": "admin", "data": ["x"]},
    {"type": T.EVENT, "namespace": "/", "data": ["x"], "id": -1},
    {"type": T.EVENT, "namespace": "/", "data": ["x"], "id": MAX_ACK_ID + 1},
])
def test_packets_are_range_checked(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SocketPacket(**kwargs)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), {1, 2}, object(), {"k": [float("-inf")]}])
def test_values_json_cannot_carry_raise_encode_error(value: Any) -> None:
    with pytest.raises(EncodeError):
        encode(SocketPacket(T.EVENT, "/", ["x", value]))


def test_json_is_what_json_stringify_writes() -> None:
    assert jsonutil.dumps({"a": [1, 2.5, None, True], "€": "ü"}) == '{"a":[1,2.5,null,true],"€":"ü"}'
    assert jsonutil.loads('{"a":[1,2.5,null,true]}') == {"a": [1, 2.5, None, True]}
    with pytest.raises(DecodeError):
        jsonutil.loads("NaN")
