"""The hot path's shortcuts give exactly what the general code gives (issue 7)."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from coup.engine.options import EngineOptions
from coup.engine.server import EngineServer
from coup.protocol.engineio import OpenInfo, encode_text
from coup.protocol.errors import DecodeError, EncodeError, PayloadTooLarge
from coup.protocol.socketio import SocketPacket, SocketPacketType, decode_text, encode
from coup.protocol.websocket import CloseCode, FrameReader, TextMessage

VALUES: list[Any] = [
    ["message", {"id": 1, "content": "héllo \u2028 \"quoted\" \\", "user": {"id": "abc"}}],
    ["x", [1, 2.5, -3, True, False, None, "", [], {}]],
    ["nested", {"a": {"b": {"c": [{"d": "e"}]}}}],
    ["tuple", (1, 2)],
    [1, "numeric event name"],
]


def _reference_text(packet: SocketPacket) -> str:
    """The wire text as the Socket.IO v5 spec writes it, for packets without binary data."""
    head = str(int(packet.type))
    if packet.namespace != "/":
        head += packet.namespace + ","
    if packet.id is not None:
        head += str(packet.id)
    return head + json.dumps(packet.data, separators=(",", ":"), ensure_ascii=False)


@pytest.mark.parametrize("data", VALUES)
@pytest.mark.parametrize("namespace", ["/", "/admin"])
@pytest.mark.parametrize("ack_id", [None, 0, 42])
@pytest.mark.parametrize("ptype", [SocketPacketType.EVENT, SocketPacketType.ACK])
def test_json_first_encode_matches_the_spec(data: list[Any], namespace: str, ack_id: int | None,
                                            ptype: SocketPacketType) -> None:
    if ptype is SocketPacketType.ACK and ack_id is None:
        ack_id = 7
    packet = SocketPacket(ptype, namespace, data, ack_id)
    encoded = encode(packet)
    assert encoded.attachments == ()
    assert encoded.text == _reference_text(packet)
    assert decode_text(encoded.text).data == json.loads(json.dumps(data))


def test_binary_values_still_become_attachments() -> None:
    packet = SocketPacket(SocketPacketType.EVENT, "/", ["upload", {"file": b"\x00\x01", "n": 1}, bytearray(b"z")])
    encoded = encode(packet)
    assert encoded.text == '52-["upload",{"file":{"_placeholder":true,"num":0},"n":1},{"_placeholder":true,"num":1}]'
    assert encoded.attachments == (b"\x00\x01", b"z")
    # a BINARY_EVENT without binary data is sent as a plain EVENT
    assert encode(SocketPacket(SocketPacketType.BINARY_EVENT, "/", ["x", 1])).text == '2["x",1]'


@pytest.mark.parametrize("bad", [[float("nan")], [float("inf")], ["x", {1j: 2}], ["x", object()]])
def test_values_json_cannot_carry_are_refused(bad: list[Any]) -> None:
    with pytest.raises(EncodeError):
        encode(SocketPacket(SocketPacketType.EVENT, "/", bad))


def test_circular_value_is_refused() -> None:
    loop: list[Any] = ["x"]
    loop.append(loop)
    with pytest.raises(EncodeError):
        encode(SocketPacket(SocketPacketType.EVENT, "/", loop))


# ---------------------------------------------------------------------------- frames


def _masked(payload: bytes, opcode: int = 0x1, fin: bool = True, mask: bytes | None = None) -> bytes:
    mask = os.urandom(4) if mask is None else mask
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    if n < 126:
        header = bytes([first, 0x80 | n])
    elif n < 65536:
        header = bytes([first, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        header = bytes([first, 0x80 | 127]) + n.to_bytes(8, "big")
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _byte_by_byte(frame: bytes, max_message: int = 1_000_000) -> list[Any]:
    reader = FrameReader(max_message=max_message)
    events: list[Any] = []
    for i in range(len(frame)):
        events.extend(reader.feed(frame[i:i + 1]))
    return events


@pytest.mark.parametrize("text", ["", "2", '42["message",{"a":1}]', "é" * 70, "x" * 125, "y" * 126, "z" * 70_000])
def test_single_frame_fast_path_equals_general_path(text: str) -> None:
    frame = _masked(text.encode())
    assert FrameReader(max_message=1_000_000).feed(frame) == [TextMessage(text)]
    assert _byte_by_byte(frame) == [TextMessage(text)]


def test_two_frames_in_one_read_and_fragments() -> None:
    reader = FrameReader(max_message=1000)
    both = _masked(b"one") + _masked(b"two")
    assert reader.feed(both) == [TextMessage("one"), TextMessage("two")]
    first = _masked(b"fr", fin=False)
    last = _masked(b"ag", opcode=0x0)
    assert reader.feed(first) == []
    assert reader.feed(last) == [TextMessage("frag")]


def test_fast_path_refusals() -> None:
    unmasked = bytes([0x81, 0x03]) + b"abc"
    with pytest.raises(DecodeError):
        FrameReader(max_message=1000).feed(unmasked)
    bad_utf8 = _masked(b"\xff\xfe")
    with pytest.raises(DecodeError) as info:
        FrameReader(max_message=1000).feed(bad_utf8)
    assert info.value.close_code == CloseCode.INVALID_DATA
    with pytest.raises(PayloadTooLarge):
        FrameReader(max_message=10).feed(_masked(b"x" * 11))
    with pytest.raises(DecodeError):
        FrameReader(max_message=1000).feed(bytes([0xC1, 0x81]) + b"\0\0\0\0a")  # RSV1 set


def test_open_packet_template_equals_open_info() -> None:
    engine = EngineServer(EngineOptions(ping_interval=5, ping_timeout=3, max_payload=2048, sid_prefix='n"1.'))
    for transport, upgrades in (("polling", ("websocket",)), ("websocket", ())):
        expected = encode_text(OpenInfo('n"1.abc', upgrades, 5000, 3000, 2048).to_packet())
        assert engine._open_info('n"1.abc', transport).text == expected


@pytest.mark.parametrize("text", [
    '2["message",{"a":1}]', '2[1]', '2["connect"]', '2[]', '2[true]', '2["x"', '2["x"]junk', '2[null]',
    '2[{"a":1}]', '2["x",1e999]', '2["' + "\\ud800" + '"]',
])
def test_event_fast_path_equals_general_path(text: str) -> None:
    """`2[...]` takes a shortcut in the decoder; ``2/,[...]`` (the same packet with the default
    namespace spelled out) takes the general path: both must give the same answer."""
    from coup.protocol.socketio import _parse_header

    def outcome(t: str) -> Any:
        try:
            return _parse_header(t)
        except DecodeError as exc:
            return type(exc)

    assert outcome(text) == outcome("2/," + text[1:])
