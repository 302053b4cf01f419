"""permessage-deflate (RFC 7692): negotiation table, the RFC's wire examples, the bounded inflater.

The examples of RFC 7692 section 7.2.3 are client frames here (masked, as a client sends
them) read by the same `FrameReader` that serves Socket.IO clients, fed whole and byte by byte.
"""

from __future__ import annotations

import os
import zlib

import pytest

from coup.protocol.deflate import Compression, Inflater, compress_message, negotiate
from coup.protocol.errors import DecodeError, PayloadTooLarge
from coup.protocol.websocket import (
    BinaryMessage,
    CloseCode,
    FrameReader,
    Opcode,
    Ping,
    TextMessage,
    WebSocketEvent,
    encode_frame,
)
from coup.protocol.wire import Outbound
from tests.wsclient import OP_BINARY, OP_CONT, OP_PING, OP_TEXT, client_frame

RSV1 = 0b100

# ---------------------------------------------------------------- negotiation

#: (offer header, our Sec-WebSocket-Extensions answer or None: declined)
NEGOTIATION: list[tuple[str | None, str | None]] = [
    (None, None),
    ("", None),
    ("x-webkit-deflate-frame", None),
    # what Chromium and Firefox send
    ("permessage-deflate; client_max_window_bits", "permessage-deflate; server_no_context_takeover"),
    # Node's ws (and socket.io-client under Node)
    ("permessage-deflate; client_max_window_bits", "permessage-deflate; server_no_context_takeover"),
    # python websockets
    ("permessage-deflate; server_max_window_bits=12; client_max_window_bits=12",
     "permessage-deflate; server_no_context_takeover; server_max_window_bits=12"),
    ("permessage-deflate", "permessage-deflate; server_no_context_takeover"),
    ("PerMessage-Deflate", "permessage-deflate; server_no_context_takeover"),
    ("permessage-deflate; server_no_context_takeover", "permessage-deflate; server_no_context_takeover"),
    ("permessage-deflate; client_no_context_takeover",
     "permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
    ("permessage-deflate; server_no_context_takeover; client_no_context_takeover",
     "permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
    ("permessage-deflate; server_max_window_bits=8", "permessage-deflate; server_no_context_takeover; "
     "server_max_window_bits=8"),
    ('permessage-deflate; server_max_window_bits="10"', "permessage-deflate; server_no_context_takeover; "
     "server_max_window_bits=10"),
    ("permessage-deflate; client_max_window_bits=9", "permessage-deflate; server_no_context_takeover"),
    # offers we refuse: unknown, repeated or malformed parameters
    ("permessage-deflate; foo", None),
    ("permessage-deflate; server_no_context_takeover; server_no_context_takeover", None),
    ("permessage-deflate; server_no_context_takeover=1", None),
    ("permessage-deflate; client_no_context_takeover=yes", None),
    ("permessage-deflate; server_max_window_bits", None),
    ("permessage-deflate; server_max_window_bits=7", None),
    ("permessage-deflate; server_max_window_bits=16", None),
    ("permessage-deflate; server_max_window_bits=010", None),
    ("permessage-deflate; server_max_window_bits=abc", None),
    ("permessage-deflate; client_max_window_bits=20", None),
    # a refused offer falls back to the next acceptable one, in the client's order
    ("permessage-deflate; server_max_window_bits=7, permessage-deflate; client_no_context_takeover",
     "permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
    ("x-webkit-deflate-frame, permessage-deflate; foo=1, permessage-deflate",
     "permessage-deflate; server_no_context_takeover"),
    # the first acceptable offer wins even when a later one would also do
    ("permessage-deflate; server_max_window_bits=9, permessage-deflate",
     "permessage-deflate; server_no_context_takeover; server_max_window_bits=9"),
]


@pytest.mark.parametrize(("offer", "answer"), NEGOTIATION)
def test_negotiation(offer: str | None, answer: str | None) -> None:
    agreement = negotiate(offer, 1024)
    assert (agreement.response if agreement is not None else None) == answer


def test_negotiation_outcome_and_interned_compression() -> None:
    a = negotiate("permessage-deflate; client_no_context_takeover; server_max_window_bits=10", 512)
    b = negotiate("permessage-deflate; server_max_window_bits=10", 512)
    assert a is not None and b is not None
    assert a.client_no_context_takeover and not b.client_no_context_takeover
    assert a.compression is b.compression  # one cache key for both: the same outgoing bytes
    assert (a.compression.window_bits, a.compression.threshold) == (10, 512)
    assert negotiate("permessage-deflate", 512).compression is not a.compression  # type: ignore[union-attr]


# ---------------------------------------------------------------- RFC 7692 section 7.2.3 examples

HELLO = bytes.fromhex("f248cdc9c90700")

#: (name, client frames, events): the RFC's payloads, masked as a client sends them
RFC_EXAMPLES: list[tuple[str, bytes, list[WebSocketEvent]]] = [
    ("7.2.3.1 a message in one compressed frame", client_frame(OP_TEXT, HELLO, rsv=RSV1), [TextMessage("Hello")]),
    ("7.2.3.1 the same message in two fragments",
     client_frame(OP_TEXT, HELLO[:3], fin=False, rsv=RSV1) + client_frame(OP_CONT, HELLO[3:]),
     [TextMessage("Hello")]),
    ("7.2.3.2 two messages sharing the LZ77 window",
     client_frame(OP_TEXT, HELLO, rsv=RSV1) + client_frame(OP_TEXT, bytes.fromhex("f200110000"), rsv=RSV1),
     [TextMessage("Hello"), TextMessage("Hello")]),
    ("7.2.3.3 a stored (uncompressed) DEFLATE block",
     client_frame(OP_TEXT, bytes.fromhex("000500faff48656c6c6f00"), rsv=RSV1), [TextMessage("Hello")]),
    ("7.2.3.4 a block with BFINAL set", client_frame(OP_TEXT, bytes.fromhex("f348cdc9c90700"), rsv=RSV1),
     [TextMessage("Hello")]),
    ("7.2.3.5 two DEFLATE blocks in one message",
     client_frame(OP_TEXT, bytes.fromhex("f24805000000ffffcac9c90700"), rsv=RSV1), [TextMessage("Hello")]),
    ("compressed binary, ping between its fragments",
     client_frame(OP_BINARY, HELLO[:2], fin=False, rsv=RSV1) + client_frame(OP_PING, b"p")
     + client_frame(OP_CONT, HELLO[2:]), [Ping(b"p"), BinaryMessage(b"Hello")]),
    ("an uncompressed message next to compressed ones",
     client_frame(OP_TEXT, b"plain") + client_frame(OP_TEXT, HELLO, rsv=RSV1),
     [TextMessage("plain"), TextMessage("Hello")]),
    ("an empty compressed message", client_frame(OP_TEXT, b"\x00", rsv=RSV1), [TextMessage("")]),
]


def _reader(max_message: int = 70_000, *, reset: bool = False) -> FrameReader:
    return FrameReader(max_message=max_message, inflater=Inflater(no_context_takeover=reset))


@pytest.mark.parametrize(("name", "data", "events"), RFC_EXAMPLES, ids=[r[0] for r in RFC_EXAMPLES])
def test_rfc_examples_whole_and_byte_by_byte(name: str, data: bytes, events: list[WebSocketEvent]) -> None:
    assert _reader().feed(data) == events
    reader = _reader()
    assert [e for i in range(len(data)) for e in reader.feed(data[i:i + 1])] == events


def test_our_frame_is_the_rfc_example_and_the_same_every_time() -> None:
    """No context takeover: the second "Hello" is not the RFC's shared-window 5 bytes but the
    same 7 as the first, so one compressed frame serves every receiver."""
    expected = bytes.fromhex("c107") + HELLO
    for _ in range(3):
        assert encode_frame(Opcode.TEXT, compress_message(b"Hello"), rsv1=True) == expected


@pytest.mark.parametrize("window_bits", [8, 9, 12, 15])
def test_compressed_messages_decode_alone_within_the_window(window_bits: int) -> None:
    """Each message decodes with a fresh inflater of the agreed window (8: zlib cannot deflate
    with a 256-byte window, we use run-length matches only)."""
    messages = [os.urandom(300) * 3, b'{"event":"message","text":"' + b"ab" * 4000 + b'"}', b"", b"x" * 70_000]
    for message in messages * 2:
        data = compress_message(message, window_bits)
        inflater = zlib.decompressobj(-window_bits)
        assert inflater.decompress(data + b"\x00\x00\xff\xff") == message


def test_rsv1_rules() -> None:
    with pytest.raises(DecodeError):  # not negotiated
        FrameReader(max_message=1000).feed(client_frame(OP_TEXT, HELLO, rsv=RSV1))
    with pytest.raises(DecodeError):  # on a continuation frame
        _reader().feed(client_frame(OP_TEXT, HELLO[:3], fin=False) + client_frame(OP_CONT, HELLO[3:], rsv=RSV1))
    with pytest.raises(DecodeError):  # on a control frame
        _reader().feed(client_frame(OP_PING, b"x", rsv=RSV1))
    with pytest.raises(DecodeError):  # RSV2 is never ours
        _reader().feed(client_frame(OP_TEXT, HELLO, rsv=0b010))


def test_corrupt_or_non_utf8_compressed_data_closes_1007() -> None:
    with pytest.raises(DecodeError) as bad:
        _reader().feed(client_frame(OP_TEXT, b"\xff\xff\xff\xff", rsv=RSV1))
    assert bad.value.close_code == CloseCode.INVALID_DATA
    with pytest.raises(DecodeError) as not_utf8:
        _reader().feed(client_frame(OP_TEXT, compress_message(b"ok \xc3\x28"), rsv=RSV1))
    assert not_utf8.value.close_code == CloseCode.INVALID_DATA


def _bomb(size: int) -> bytes:
    return compress_message(b"\x00" * size)


@pytest.mark.parametrize("fragmented", [False, True])
def test_deflate_bomb_is_refused_1009_without_inflating_it(fragmented: bool) -> None:
    """64 MiB of zeros compress to ~64 KiB; with a 1 MB limit the reader stops after 1 MB + 1."""
    bomb = _bomb(64 * 1024 * 1024)
    assert len(bomb) < 100_000
    if fragmented:
        data = b"".join(client_frame(OP_CONT if i else OP_BINARY, bomb[i:i + 1000], fin=i + 1000 >= len(bomb),
                                     rsv=0 if i else RSV1) for i in range(0, len(bomb), 1000))
    else:
        data = client_frame(OP_BINARY, bomb, rsv=RSV1)
    with pytest.raises(PayloadTooLarge) as refused:
        _reader(1_000_000).feed(data)
    assert refused.value.close_code == CloseCode.MESSAGE_TOO_BIG


def test_inflater_output_is_bounded_by_the_room() -> None:
    inflater = Inflater(no_context_takeover=True)
    with pytest.raises(PayloadTooLarge):
        inflater.feed(_bomb(10_000), 9_999)
    exact = Inflater(no_context_takeover=True)
    assert len(exact.feed(_bomb(10_000), 10_000) + exact.finish(0)) == 10_000


def test_message_at_the_limit_passes_and_one_byte_more_does_not() -> None:
    at_limit = client_frame(OP_TEXT, compress_message(b"a" * 5000), rsv=RSV1)
    assert _reader(5000).feed(at_limit) == [TextMessage("a" * 5000)]
    with pytest.raises(PayloadTooLarge):
        _reader(5000).feed(client_frame(OP_TEXT, compress_message(b"a" * 5001), rsv=RSV1))


def test_context_takeover_kept_or_reset_as_agreed() -> None:
    shared_window = (client_frame(OP_TEXT, HELLO, rsv=RSV1)
                     + client_frame(OP_TEXT, bytes.fromhex("f200110000"), rsv=RSV1))
    assert _reader().feed(shared_window) == [TextMessage("Hello")] * 2
    with pytest.raises(DecodeError):  # the client promised to reset: a back-reference is invalid
        _reader(reset=True).feed(shared_window)


# ---------------------------------------------------------------- outgoing frames, encode once

def test_threshold_and_one_compressed_frame_per_outbound() -> None:
    compression = Compression.of(15, 1024)
    small = Outbound("4" + "x" * 1000)
    assert small.ws_deflated(compression) is small.ws_bytes()  # under the threshold: the plain frame
    big = Outbound("4" + '["message",{"text":"' + "hello world " * 200 + '"}]')
    frames = big.ws_deflated(compression)
    assert frames[0] == 0xC1  # FIN + RSV1 + text
    assert big.ws_deflated(compression) is frames  # cached: compressed once for every receiver
    assert len(frames) < len(big.ws_bytes()) // 5
    reader = _reader()
    masked = _as_client_frames(frames)
    assert reader.feed(masked) == [TextMessage(big.text or "")]


def test_non_ascii_text_near_the_threshold_is_measured_in_bytes() -> None:
    compression = Compression.of(15, 1024)
    out = Outbound("4" + "€" * 400)  # 401 characters, 1201 bytes
    assert out.ws_deflated(compression)[0] == 0xC1


def test_binary_attachments_compressed_each_by_the_threshold() -> None:
    compression = Compression.of(15, 100)
    out = Outbound('451-["file",{"_placeholder":true,"num":0}]', (b"\x00" * 5000, b"tiny"))
    frames = _as_client_frames(out.ws_deflated(compression))
    events = _reader().feed(frames)
    assert events == [TextMessage(out.text or ""), BinaryMessage(b"\x00" * 5000), BinaryMessage(b"tiny")]


def test_other_compression_parameters_get_their_own_bytes() -> None:
    out = Outbound("4" + "abc" * 1000)
    default, small_window = Compression.of(15, 0), Compression.of(9, 0)
    first = out.ws_deflated(default)
    other = out.ws_deflated(small_window)
    assert other != first or len(other) == len(first)
    assert out.ws_deflated(default) is first


def _as_client_frames(server_frames: bytes) -> bytes:
    """Re-mask server frames (single, unfragmented) so the client-side reader can parse them."""
    out = []
    pos = 0
    while pos < len(server_frames):
        b0, b1 = server_frames[pos], server_frames[pos + 1]
        n, pos = b1 & 0x7F, pos + 2
        if n == 126:
            n, pos = int.from_bytes(server_frames[pos:pos + 2], "big"), pos + 2
        elif n == 127:
            n, pos = int.from_bytes(server_frames[pos:pos + 8], "big"), pos + 8
        out.append(client_frame(b0 & 0x0F, server_frames[pos:pos + n], rsv=(b0 >> 4) & 0b111))
        pos += n
    return b"".join(out)
