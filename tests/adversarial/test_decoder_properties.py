"""Property tests: every decoder a peer can reach, fed arbitrary bytes cut into arbitrary
pieces, raises nothing but its decode-error family (and never hangs or grows without bound).

Families: `coup.protocol.errors.DecodeError` for WebSocket frames, Engine.IO and
Socket.IO; `EnvelopeError` for the SockJS envelope; `ClientError` (``BAD_REQUEST``) for
HTTP API bodies. The strategies mix pure noise with inputs built near the valid shapes
(a frame header, a packet type digit, a JSON prefix), where the interesting bugs live.
"""

from __future__ import annotations

import itertools
import json
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coup.core.errors import ClientError
from coup.domain.validation import json_body
from coup.protocol import jsonutil
from coup.protocol.engineio import decode_payload, decode_text
from coup.protocol.errors import DecodeError
from coup.protocol.socketio import SocketDecoder
from coup.protocol.websocket import FrameReader
from coup.transports.sockjs.envelope import EnvelopeError, decode_inbound

EXAMPLES = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def pieces(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """`data` cut at arbitrary points."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=8)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def _frame(opcode: int, payload: bytes, fin: bool, rsv: int, mask: bytes, masked: bool, length_form: int) -> bytes:
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    if length_form == 0 and n < 126:
        header = bytes((first, (0x80 if masked else 0) | n))
    elif length_form <= 1 and n < 65536:
        header = bytes((first, (0x80 if masked else 0) | 126)) + struct.pack("!H", n)
    else:
        header = bytes((first, (0x80 if masked else 0) | 127)) + struct.pack("!Q", n)
    if not masked:
        return header + payload
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


frames = st.builds(_frame, st.integers(0, 15), st.binary(max_size=300), st.booleans(), st.integers(0, 7),
                   st.binary(min_size=4, max_size=4), st.booleans(), st.integers(0, 2))
frame_streams = st.one_of(st.binary(max_size=2000), st.lists(frames, max_size=12).map(b"".join))


@EXAMPLES
@given(st.data(), frame_streams, st.integers(1, 5000))
def test_websocket_frames(data: st.DataObject, stream: bytes, max_message: int) -> None:
    reader = FrameReader(max_message=max_message, max_fragments=8)
    for piece in data.draw(pieces(stream)):
        try:
            reader.feed(piece)
        except DecodeError as exc:
            assert exc.close_code in (1002, 1007, 1009)
            assert reader.feed(b"\x81\x80\0\0\0\0") == []  # a failed reader reads nothing more
            return


engine_texts = st.one_of(st.text(max_size=300), st.builds(lambda d, t: str(d) + t, st.integers(0, 9), st.text()))


@EXAMPLES
@given(engine_texts)
def test_engineio_packets(text: str) -> None:
    try:
        decode_text(text)
    except DecodeError:
        pass


@EXAMPLES
@given(st.one_of(st.binary(max_size=2000), engine_texts.map(lambda t: t.encode("utf-8", "surrogatepass")),
                 st.lists(engine_texts, max_size=20).map(lambda ts: "\x1e".join(ts).encode("utf-8", "surrogatepass"))))
def test_engineio_polling_payloads(body: bytes) -> None:
    try:
        decode_payload(body, max_payload=1000, max_packets=16)
    except DecodeError:
        pass


socketio_texts = st.one_of(
    st.text(max_size=300),
    st.builds(lambda t, n, a, rest: f"{t}{n}{a}{rest}", st.integers(0, 9).map(str),
              st.sampled_from(["", "/", "/other,", "/x"]), st.sampled_from(["", "1", "12-", "99999999999999999999"]),
              st.one_of(st.text(max_size=100), st.recursive(
                  st.none() | st.booleans() | st.integers() | st.text(max_size=10)
                  | st.just({"_placeholder": True, "num": 0}),
                  lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children,
                                                                                   max_size=4),
                  max_leaves=20).map(json.dumps))),
)


@EXAMPLES
@given(st.lists(st.one_of(socketio_texts, st.binary(max_size=50)), min_size=1, max_size=8))
def test_socketio_packets(messages: list[str | bytes]) -> None:
    decoder = SocketDecoder(max_attachments=3)
    for message in messages:
        try:
            if isinstance(message, str):
                decoder.feed_text(message)
            else:
                decoder.feed_binary(message)
        except DecodeError:
            decoder = SocketDecoder(max_attachments=3)  # the session would be closed: start afresh


envelopes = st.one_of(
    st.text(max_size=300),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
                 lambda children: st.lists(children, max_size=4) | st.dictionaries(
                     st.sampled_from(["type", "event", "args", "ack", "auth", "nsp", "data", "x"]), children,
                     max_size=5), max_leaves=20).map(json.dumps),
    st.builds(lambda kind, rest: json.dumps({"type": kind, **rest}),
              st.sampled_from(["auth", "event", "ack", "disconnect", "error", ""]),
              st.dictionaries(st.sampled_from(["event", "args", "ack", "auth", "nsp"]),
                              st.one_of(st.text(max_size=5), st.integers(-3, 2**60), st.lists(st.integers()),
                                        st.none()), max_size=4)),
)


@EXAMPLES
@given(st.one_of(envelopes, st.integers(), st.none(), st.lists(st.text(max_size=5), max_size=3)))
def test_sockjs_envelope(message: object) -> None:
    try:
        decode_inbound(message, "/")
    except EnvelopeError:
        pass


json_texts = st.one_of(
    st.binary(max_size=500),
    st.text(max_size=300).map(str.encode),
    st.integers(0, 5000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(0, 5000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.sampled_from([b"NaN", b"-Infinity", b"1e999", b'{"userId":1e400}', b"\xef\xbb\xbf{}", b'"\\ud800"']),
)


@EXAMPLES
@given(json_texts)
def test_http_json_bodies(raw: bytes) -> None:
    try:
        json_body(raw)
    except ClientError as exc:
        assert exc.code == "BAD_REQUEST"


@EXAMPLES
@given(json_texts)
def test_protocol_json(raw: bytes) -> None:
    try:
        jsonutil.loads(raw.decode("utf-8", "replace"))
    except DecodeError:
        pass


@pytest.mark.parametrize("depth", [10, 1000, 100_000])
def test_json_nesting_at_any_depth_is_a_decode_error(depth: int) -> None:
    if depth > 32:
        with pytest.raises(ClientError):
            json_body(b"[" * depth + b"]" * depth)
    else:
        assert json_body(b"[" * depth + b"]" * depth) is not None
