"""Engine.IO v4 packets and polling payloads, from wire examples of the spec and the official suite.

One table feeds both directions: each row is the text on the wire and the packet it means.
Payload rows are also decoded record by record (the split form a client produces when it
sends the same packets in several POSTs) and from bytes with multi-byte UTF-8.
"""

from __future__ import annotations

import json

import pytest

from coup.protocol.engineio import (
    SEPARATOR,
    EnginePacket,
    EnginePacketType,
    OpenInfo,
    decode_payload,
    decode_text,
    decode_ws_binary,
    encode_payload,
    encode_text,
)
from coup.protocol.errors import DecodeError, PayloadTooLarge, ProtocolError

T = EnginePacketType

#: (wire text, packet) — the spec's examples ("2probe", "4hello", "6"...) and the suite's
PACKETS = [
    ("0", EnginePacket(T.OPEN)),
    ("1", EnginePacket(T.CLOSE)),
    ("2", EnginePacket(T.PING)),
    ("2probe", EnginePacket(T.PING, "probe")),
    ("3", EnginePacket(T.PONG)),
    ("3probe", EnginePacket(T.PONG, "probe")),
    ("4hello", EnginePacket(T.MESSAGE, "hello")),
    ("4HelloWorld", EnginePacket(T.MESSAGE, "HelloWorld")),
    ("4€", EnginePacket(T.MESSAGE, "€")),
    ("4", EnginePacket(T.MESSAGE, "")),
    ('42["hey","Jude"]', EnginePacket(T.MESSAGE, '2["hey","Jude"]')),
    ("5", EnginePacket(T.UPGRADE)),
    ("6", EnginePacket(T.NOOP)),
    ("bAQIDBA==", EnginePacket(T.MESSAGE, b"\x01\x02\x03\x04")),
    ("b", EnginePacket(T.MESSAGE, b"")),
]


@pytest.mark.parametrize(("wire", "packet"), PACKETS, ids=[w for w, _ in PACKETS])
def test_packet_table_encodes(wire: str, packet: EnginePacket) -> None:
    assert encode_text(packet) == wire


@pytest.mark.parametrize(("wire", "packet"), PACKETS, ids=[w for w, _ in PACKETS])
def test_packet_table_decodes(wire: str, packet: EnginePacket) -> None:
    assert decode_text(wire) == packet


#: (payload, packets) — polling bodies from the spec's sample session and the official suite
PAYLOADS = [
    ("4hello", ["4hello"]),
    ("4hello\x1e4world", ["4hello", "4world"]),
    ("4test1\x1e4test2\x1e4test3", ["4test1", "4test2", "4test3"]),
    ("4hello\x1ebAQIDBA==", ["4hello", "bAQIDBA=="]),
    ('42["hello"]\x1e42["world"]', ['42["hello"]', '42["world"]']),
    ("2\x1e4€\x1e3", ["2", "4€", "3"]),
]


@pytest.mark.parametrize(("payload", "records"), PAYLOADS)
def test_payload_table_both_ways(payload: str, records: list[str]) -> None:
    packets = [decode_text(r) for r in records]
    assert encode_payload(packets) == payload
    assert decode_payload(payload, max_payload=10_000) == packets
    assert decode_payload(payload.encode("utf-8"), max_payload=10_000) == packets


@pytest.mark.parametrize(("payload", "records"), PAYLOADS)
def test_payload_split_across_posts_gives_the_same_packets(payload: str, records: list[str]) -> None:
    """A client may send the same packets one POST each: the result must be identical."""
    whole = decode_payload(payload.encode("utf-8"), max_payload=10_000)
    pieces = [p for part in payload.split(SEPARATOR)
              for p in decode_payload(part.encode("utf-8"), max_payload=10_000)]
    assert pieces == whole


def test_open_packet_matches_the_spec_handshake() -> None:
    info = OpenInfo("lv_VI97HAXpY6yYWAAAC", ("websocket",), 25000, 20000, 1_000_000)
    wire = encode_text(info.to_packet())
    assert wire == ('0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],'
                    '"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}')
    body = json.loads(wire[1:])
    assert set(body) == {"sid", "upgrades", "pingInterval", "pingTimeout", "maxPayload"}


def test_websocket_binary_frame_is_a_message_without_prefix() -> None:
    assert decode_ws_binary(b"\x01\x02\x03\x04") == EnginePacket(T.MESSAGE, b"\x01\x02\x03\x04")
    assert decode_ws_binary(bytearray(b"\x04")).data == b"\x04"  # never a mutable buffer


def test_binary_data_only_on_message_packets() -> None:
    with pytest.raises(ValueError):
        EnginePacket(T.PING, b"\x01")


@pytest.mark.parametrize("wire", [
    "",            # empty packet
    "7",           # unknown type
    "9hello",
    "abc",         # the suite's "invalid packet format"
    "x",
    "bAQ=ID",      # invalid base64
    "b!!!!",
    "b=",
])
def test_malformed_packets_are_decode_errors(wire: str) -> None:
    with pytest.raises(DecodeError):
        decode_text(wire)


def test_payload_with_one_bad_record_fails_whole() -> None:
    with pytest.raises(DecodeError):
        decode_payload(b"4hello\x1eabc", max_payload=10_000)
    with pytest.raises(DecodeError):  # an empty record between separators
        decode_payload(b"4a\x1e\x1e4b", max_payload=10_000)


def test_payload_over_max_payload_is_payload_too_large() -> None:
    body = b"4" + b"x" * 2000
    assert decode_payload(body, max_payload=2001) == [EnginePacket(T.MESSAGE, "x" * 2000)]
    with pytest.raises(PayloadTooLarge) as info:
        decode_payload(body, max_payload=2000)
    assert info.value.close_code == 1009
    assert isinstance(info.value, DecodeError)


def test_payload_with_too_many_packets_is_refused() -> None:
    body = SEPARATOR.join(["2"] * 11)
    assert len(decode_payload(body, max_payload=10_000, max_packets=11)) == 11
    with pytest.raises(DecodeError):
        decode_payload(body, max_payload=10_000, max_packets=10)


def test_payload_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(DecodeError):
        decode_payload(b"4\xff\xfe", max_payload=10_000)
    # a multi-byte character cut in half is invalid too
    with pytest.raises(DecodeError):
        decode_payload("4€".encode()[:-1], max_payload=10_000)


def test_decode_errors_share_one_family() -> None:
    for bad in ("", "7", "bAQ=ID"):
        with pytest.raises(ProtocolError):
            decode_text(bad)
