"""RFC 6455 framing: the client-frame reader fed whole, byte by byte and in odd chunks.

Every valid row must produce the same events however the bytes are cut; every invalid one
must raise a `DecodeError` carrying the close code the server then sends.
"""

from __future__ import annotations

import os
import random
import struct
import tracemalloc

import pytest

from coup.protocol.errors import DecodeError, PayloadTooLarge
from coup.protocol.websocket import (
    BinaryMessage,
    CloseCode,
    CloseReceived,
    FrameReader,
    Opcode,
    Ping,
    Pong,
    TextMessage,
    Unmask,
    WebSocketEvent,
    accept_key,
    encode_close_frame,
    encode_frame,
    encode_text_frame,
    unmask,
    valid_client_key,
)
from coup.transports.websocket import native_unmask
from tests.wsclient import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    client_frame,
    close_frame,
)

MAX = 70_000

#: (name, client bytes, events)
VALID: list[tuple[str, bytes, list[WebSocketEvent]]] = [
    ("text", client_frame(OP_TEXT, b"4hello"), [TextMessage("4hello")]),
    ("empty text", client_frame(OP_TEXT, b""), [TextMessage("")]),
    ("utf-8 text", client_frame(OP_TEXT, "4€ü".encode()), [TextMessage("4€ü")]),
    ("binary", client_frame(OP_BINARY, b"\x01\x02\x03\x04"), [BinaryMessage(b"\x01\x02\x03\x04")]),
    ("125 bytes (7-bit length)", client_frame(OP_BINARY, b"x" * 125), [BinaryMessage(b"x" * 125)]),
    ("126 bytes (16-bit length)", client_frame(OP_BINARY, b"y" * 126), [BinaryMessage(b"y" * 126)]),
    ("65535 bytes", client_frame(OP_BINARY, b"z" * 65535), [BinaryMessage(b"z" * 65535)]),
    ("65536 bytes (64-bit length)", client_frame(OP_BINARY, b"w" * 65536), [BinaryMessage(b"w" * 65536)]),
    ("fragmented text", client_frame(OP_TEXT, b"4he", fin=False) + client_frame(OP_CONT, b"ll", fin=False)
     + client_frame(OP_CONT, b"o"), [TextMessage("4hello")]),
    ("character split across fragments", client_frame(OP_TEXT, "4€".encode()[:2], fin=False)
     + client_frame(OP_CONT, "4€".encode()[2:]), [TextMessage("4€")]),
    ("ping between fragments", client_frame(OP_BINARY, b"ab", fin=False) + client_frame(OP_PING, b"hi")
     + client_frame(OP_CONT, b"cd"), [Ping(b"hi"), BinaryMessage(b"abcd")]),
    ("ping", client_frame(OP_PING, b""), [Ping(b"")]),
    ("pong", client_frame(OP_PONG, b"x"), [Pong(b"x")]),
    ("close with code and reason", close_frame(1000, b"bye"), [CloseReceived(1000, "bye")]),
    ("close without code", close_frame(None), [CloseReceived(CloseCode.NO_STATUS, "")]),
    ("close 1012 (registered later)", close_frame(1012), [CloseReceived(1012, "")]),
    ("close 3000", close_frame(3000), [CloseReceived(3000, "")]),
    ("close 4999", close_frame(4999), [CloseReceived(4999, "")]),
    ("several frames in one read", client_frame(OP_TEXT, b"2") + client_frame(OP_TEXT, b"3")
     + client_frame(OP_BINARY, b""), [TextMessage("2"), TextMessage("3"), BinaryMessage(b"")]),
    ("nothing after a close is read", close_frame(1001) + client_frame(OP_TEXT, b"late"),
     [CloseReceived(1001, "")]),
]


def feed_all(reader: FrameReader, chunks: list[bytes]) -> list[WebSocketEvent]:
    events: list[WebSocketEvent] = []
    for chunk in chunks:
        events.extend(reader.feed(chunk))
    return events


def random_chunks(data: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    chunks, i = [], 0
    while i < len(data):
        n = rng.randint(1, 9)
        chunks.append(data[i:i + n])
        i += n
    return chunks


@pytest.mark.parametrize(("name", "data", "events"), VALID, ids=[v[0] for v in VALID])
def test_valid_frames_whole(name: str, data: bytes, events: list[WebSocketEvent]) -> None:
    assert FrameReader(MAX).feed(data) == events


@pytest.mark.parametrize(("name", "data", "events"), [v for v in VALID if len(v[1]) < 2000],
                         ids=[v[0] for v in VALID if len(v[1]) < 2000])
def test_valid_frames_byte_by_byte(name: str, data: bytes, events: list[WebSocketEvent]) -> None:
    assert feed_all(FrameReader(MAX), [data[i:i + 1] for i in range(len(data))]) == events


@pytest.mark.parametrize(("name", "data", "events"), VALID, ids=[v[0] for v in VALID])
def test_valid_frames_in_random_chunks(name: str, data: bytes, events: list[WebSocketEvent]) -> None:
    for seed in range(3):
        assert feed_all(FrameReader(MAX), random_chunks(data, seed)) == events


def test_large_frame_byte_by_byte_from_its_header() -> None:
    """The 64-bit length header arrives one byte at a time, then the body in two halves."""
    data = client_frame(OP_BINARY, b"w" * 65536)
    reader = FrameReader(MAX)
    for i in range(14):  # 2 + 8 length bytes + 4 mask bytes
        assert reader.feed(data[i:i + 1]) == []
    assert reader.feed(data[14:40000]) == []
    assert reader.feed(data[40000:]) == [BinaryMessage(b"w" * 65536)]


XORS = pytest.mark.parametrize("xor", [unmask, native_unmask()], ids=["python-xor", "c-xor"])


@XORS
@pytest.mark.parametrize(("name", "data", "events"), VALID, ids=[v[0] for v in VALID])
def test_valid_frames_in_random_chunks_with_either_xor(name: str, data: bytes, events: list[WebSocketEvent],
                                                       xor: Unmask) -> None:
    assert feed_all(FrameReader(MAX, unmask=xor), random_chunks(data, 11)) == events


def reads(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


LARGE_TEXT = "é€ab" * 60_000 + "z"  # 300,001 bytes: characters cut at most read boundaries


@XORS
@pytest.mark.parametrize("read_size", [4093, 65536, 262144])
def test_large_messages_read_as_an_event_loop_delivers_them(read_size: int, xor: Unmask) -> None:
    """Payload taken straight from each read (no gathering buffer), the mask's phase carried
    across reads, text decoded piece by piece; a small frame right after shares the last read."""
    encoded = LARGE_TEXT.encode()
    binary = bytes(range(256)) * 1000 + b"!"
    data = (client_frame(OP_TEXT, encoded) + client_frame(OP_BINARY, binary)
            + client_frame(OP_TEXT, encoded[:100_000], fin=False) + client_frame(OP_PING, b"p")
            + client_frame(OP_CONT, encoded[100_000:]) + client_frame(OP_TEXT, b"4end"))
    events = feed_all(FrameReader(1_000_000, unmask=xor), reads(data, read_size))
    assert events == [TextMessage(LARGE_TEXT), BinaryMessage(binary), Ping(b"p"), TextMessage(LARGE_TEXT),
                      TextMessage("4end")]


@XORS
def test_invalid_utf8_deep_in_a_large_text_fails_with_the_read_that_carries_it(xor: Unmask) -> None:
    encoded = bytearray(LARGE_TEXT.encode())
    encoded[150_000] = 0xFF
    parts = reads(client_frame(OP_TEXT, bytes(encoded)), 65536)
    reader = FrameReader(1_000_000, unmask=xor)
    for part in parts[:2]:
        assert reader.feed(part) == []
    with pytest.raises(DecodeError) as info:
        reader.feed(parts[2])  # bytes 131,058-196,593 of the payload: the bad one, not the end
    assert info.value.close_code == CloseCode.INVALID_DATA
    assert reader.feed(parts[3]) == []  # nothing more is read


@pytest.mark.parametrize(("opcode", "payload"), [(OP_BINARY, os.urandom(120_000)),
                                                (OP_TEXT, ("é€ab" * 17_000).encode())])
def test_a_message_trickled_a_byte_at_a_time_holds_little_more_than_its_size(opcode: int, payload: bytes) -> None:
    """One piece object per read would cost some 50 bytes per byte: runs of small pieces are joined."""
    data = client_frame(opcode, payload)
    parts = [data[i:i + 1] for i in range(len(data))]
    reader = FrameReader(1_000_000)
    tracemalloc.start()
    try:
        events = feed_all(reader, parts[:-1])
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert events == []
    assert held < 1.5 * len(payload)  # a str of "é€ab" is 2 bytes a character: 1.14x the UTF-8
    (event,) = reader.feed(parts[-1])
    assert event == (BinaryMessage(payload) if opcode == OP_BINARY else TextMessage(payload.decode()))


def test_a_large_message_just_within_the_limit_and_one_byte_over() -> None:
    limit = 200_000
    ok = feed_all(FrameReader(limit), reads(client_frame(OP_BINARY, b"a" * limit), 65536))
    assert ok == [BinaryMessage(b"a" * limit)]
    fragments = client_frame(OP_BINARY, b"a" * 150_000, fin=False) + client_frame(OP_CONT, b"b" * 50_001)
    reader = FrameReader(limit)
    with pytest.raises(PayloadTooLarge):
        feed_all(reader, reads(fragments, 65536))


def long_header(opcode: int, length: int) -> bytes:
    return struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)


#: (name, client bytes, close code the server must send)
INVALID: list[tuple[str, bytes, int]] = [
    ("unmasked frame", client_frame(OP_TEXT, b"4hi", masked=False), 1002),
    ("RSV1 without an extension", client_frame(OP_TEXT, b"4hi", rsv=4), 1002),
    ("RSV3 set", client_frame(OP_BINARY, b"x", rsv=1), 1002),
    ("message over max (header alone)", long_header(OP_BINARY, MAX + 1), 1009),
    ("fragments adding up over max", client_frame(OP_BINARY, b"a" * 40_000, fin=False)
     + client_frame(OP_CONT, b"b" * 40_000), 1009),
    ("length with the high bit", long_header(OP_BINARY, 1 << 63), 1002),
    ("control frame over 125 bytes", client_frame(OP_PING, b"p" * 126), 1002),
    ("fragmented control frame", client_frame(OP_PING, b"p", fin=False), 1002),
    ("fragmented close frame", client_frame(OP_CLOSE, b"\x03\xe8", fin=False), 1002),
    ("reserved opcode 0x3", client_frame(0x3, b"x"), 1002),
    ("reserved control opcode 0xB", client_frame(0xB, b"x"), 1002),
    ("continuation without a message", client_frame(OP_CONT, b"x"), 1002),
    ("new message inside a fragmented one", client_frame(OP_TEXT, b"a", fin=False)
     + client_frame(OP_TEXT, b"b"), 1002),
    ("text that is not UTF-8", client_frame(OP_TEXT, b"4\xff\xfe"), 1007),
    ("fragmented text that is not UTF-8", client_frame(OP_TEXT, b"4\xe2\x82", fin=False)
     + client_frame(OP_CONT, b"x"), 1007),
    ("close with a one-byte payload", client_frame(OP_CLOSE, b"\x03"), 1002),
    ("close reason not UTF-8", close_frame(1000, b"\xff"), 1007),
    *[(f"close code {code}", close_frame(code), 1002)
      for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535)],
]


@pytest.mark.parametrize(("name", "data", "code"), INVALID, ids=[v[0] for v in INVALID])
def test_invalid_frames_raise_with_close_code(name: str, data: bytes, code: int) -> None:
    with pytest.raises(DecodeError) as info:
        FrameReader(MAX).feed(data)
    assert info.value.close_code == code
    if code == 1009:
        assert isinstance(info.value, PayloadTooLarge)


@pytest.mark.parametrize(("name", "data", "code"), INVALID, ids=[v[0] for v in INVALID])
def test_invalid_frames_byte_by_byte(name: str, data: bytes, code: int) -> None:
    reader = FrameReader(MAX)
    with pytest.raises(DecodeError) as info:
        for i in range(len(data)):
            reader.feed(data[i:i + 1])
    assert info.value.close_code == code


def test_oversized_message_is_refused_before_its_body_arrives() -> None:
    """Memory stays bounded: the length in the header is enough to refuse."""
    reader = FrameReader(1024)
    header = struct.pack("!BBH", 0x82, 0x80 | 126, 1025) + b"\x00\x00\x00\x00"
    with pytest.raises(PayloadTooLarge):
        reader.feed(header)
    assert FrameReader(1024).feed(client_frame(OP_BINARY, b"x" * 1024)) == [BinaryMessage(b"x" * 1024)]


def test_control_frames_do_not_count_against_a_fragmented_message() -> None:
    reader = FrameReader(100)
    data = client_frame(OP_BINARY, b"a" * 60, fin=False) + client_frame(OP_PING, b"p" * 100) \
        + client_frame(OP_CONT, b"b" * 40)
    assert reader.feed(data) == [Ping(b"p" * 100), BinaryMessage(b"a" * 60 + b"b" * 40)]


@pytest.mark.parametrize(("payload", "header"), [
    (b"", b"\x81\x00"),
    (b"x" * 125, b"\x81\x7d"),
    (b"x" * 126, b"\x81\x7e\x00\x7e"),
    (b"x" * 65535, b"\x81\x7e\xff\xff"),
    (b"x" * 65536, b"\x81\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
])
def test_server_frames_are_unmasked_with_minimal_length(payload: bytes, header: bytes) -> None:
    assert encode_frame(Opcode.TEXT, payload) == header + payload


def test_server_frames_read_back() -> None:
    assert encode_text_frame("4€") == b"\x81\x04" + "4€".encode()
    assert encode_close_frame(1009) == b"\x88\x02\x03\xf1"
    assert encode_frame(Opcode.BINARY, b"ab", fin=False) == b"\x02\x02ab"


def test_replies_the_protocol_requires() -> None:
    assert Ping(b"hi").response() == b"\x8a\x02hi"
    assert CloseReceived(1001, "").response() == b"\x88\x02\x03\xe9"
    assert CloseReceived(CloseCode.NO_STATUS, "").response() == b"\x88\x00"


def test_accept_key_from_rfc_6455() -> None:
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert valid_client_key("dGhlIHNhbXBsZSBub25jZQ==")
    assert not valid_client_key("dGhlIHNhbXBsZQ==")  # 11 bytes
    assert not valid_client_key("not base64!")
    assert not valid_client_key("")


@pytest.mark.parametrize("xor", [unmask, native_unmask()], ids=["python", "native"])
def test_unmask_matches_the_bytewise_definition(xor: Unmask) -> None:
    rng = random.Random(7)
    for n in (0, 1, 3, 4, 5, 127, 1000, 2047, 2048, 2049, 70_001):  # both sides of the lane switch
        payload, mask = os.urandom(n), bytes(rng.getrandbits(8) for _ in range(4))
        assert xor(mask, payload) == bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
