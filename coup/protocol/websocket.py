"""RFC 6455 WebSocket framing for the server side, sans-I/O.

`FrameReader` turns bytes from a client into events; `encode_frame` builds unmasked
server frames. Server frames need no mask, so a broadcast is framed once and the same
bytes go to every receiver (see `coup.protocol.wire`).

Only what a Socket.IO server needs: one extension, permessage-deflate (`coup.protocol.deflate`:
RSV1 marks a compressed message when it was negotiated, any other RSV bit is an error),
fragmented messages reassembled up to `max_message` bytes (after decompression) and
`max_fragments` frames, control frames answered by the I/O layer from the events returned here.
"""

from __future__ import annotations

import base64
import codecs
import functools
import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import AnyStr

from coup.protocol.deflate import Inflater
from coup.protocol.errors import DecodeError, PayloadTooLarge

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Opcode(IntEnum):
    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS = 1005
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011


def accept_key(client_key: str) -> str:
    """The Sec-WebSocket-Accept value for a client's Sec-WebSocket-Key."""
    digest = hashlib.sha1(client_key.strip().encode("ascii") + _GUID).digest()
    return base64.b64encode(digest).decode("ascii")


def valid_client_key(client_key: str) -> bool:
    """A Sec-WebSocket-Key must be the base64 of 16 bytes."""
    try:
        return len(base64.b64decode(client_key.strip(), validate=True)) == 16
    except ValueError:
        return False


def encode_frame(opcode: Opcode, payload: bytes, *, fin: bool = True, rsv1: bool = False) -> bytes:
    """One unmasked frame (server to client); `rsv1` marks a compressed message's first frame."""
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | int(opcode)
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", first, n)
    elif n < 65536:
        header = struct.pack("!BBH", first, 126, n)
    else:
        header = struct.pack("!BBQ", first, 127, n)
    return header + payload


def encode_text_frame(text: str) -> bytes:
    """A final text frame (what nearly every server frame is), built without `struct` for short ones."""
    payload = text.encode("utf-8")
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    return encode_frame(Opcode.TEXT, payload)


def encode_close_frame(code: int = CloseCode.NORMAL, reason: str = "") -> bytes:
    return encode_frame(Opcode.CLOSE, struct.pack("!H", code) + reason.encode("utf-8")[:123])


#: XOR of a payload with a 4-byte mask, ``unmask(mask, payload)`` (the argument order of
#: Tornado's C `websocket_mask`); `FrameReader` takes a faster one from outside this sans-I/O
#: package: `coup.transports.websocket.native_unmask`
Unmask = Callable[[bytes, bytes], bytes]

#: from this many bytes on the pure-Python `unmask` XORs each of the four byte lanes with a
#: translation table (about 2x faster than the big-integer XOR at 64 KiB; slower below 2 KiB)
_LANES_FROM = 2048


@functools.cache
def _xor_table(key: int) -> bytes:
    return bytes(b ^ key for b in range(256))


def unmask(mask: bytes, payload: bytes) -> bytes:
    """XOR `payload` with the 4-byte `mask` in pure Python: one big-integer XOR for a short
    payload, four strided `bytes.translate` calls (one per mask byte) for a long one."""
    n = len(payload)
    if n < _LANES_FROM:
        if n == 0:
            return b""
        key = (mask * (n // 4 + 1))[:n]
        return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")
    out = bytearray(n)
    for lane in range(4):
        out[lane::4] = payload[lane::4].translate(_xor_table(mask[lane]))
    return bytes(out)


@dataclass(frozen=True, slots=True)
class TextMessage:
    text: str


@dataclass(frozen=True, slots=True)
class BinaryMessage:
    data: bytes


@dataclass(frozen=True, slots=True)
class Ping:
    payload: bytes

    def response(self) -> bytes:
        """The PONG frame the protocol requires in reply."""
        return encode_frame(Opcode.PONG, self.payload)


@dataclass(frozen=True, slots=True)
class Pong:
    payload: bytes


@dataclass(frozen=True, slots=True)
class CloseReceived:
    code: int
    reason: str

    def response(self) -> bytes:
        """The CLOSE frame to send back (echoing the code, as RFC 6455 §5.5.1 suggests)."""
        if self.code == CloseCode.NO_STATUS:
            return encode_frame(Opcode.CLOSE, b"")
        return encode_close_frame(self.code)


WebSocketEvent = TextMessage | BinaryMessage | Ping | Pong | CloseReceived

#: codes a peer may send (RFC 6455 §7.4 and the IANA registry); 1004-1006 and 1015 are reserved
_VALID_CLOSE_CODES = frozenset(range(1000, 1015)) - {1004, 1005, 1006}
#: frames one message may be split into (websockets' limit): an endless run of tiny
#: continuation frames otherwise costs per-frame memory and CPU for a message of any size
MAX_FRAGMENTS = 4096

_Utf8Decoder = codecs.getincrementaldecoder("utf-8")
#: a message's pieces shorter than this come from a peer trickling it (a few bytes per read or
#: fragment): every `_SMALL_RUN` of them in a row are joined into one, so a 1 MB message sent a
#: byte at a time holds about 1.2 MB of pieces, not 1M objects of 50 bytes
_SMALL_PIECE = 4096
_SMALL_RUN = 256


def _not_utf8() -> DecodeError:
    return DecodeError("text message is not valid UTF-8", close_code=CloseCode.INVALID_DATA)


class FrameReader:
    """Incremental parser of client frames.

    ``events = reader.feed(data)``: returns the complete events found so far; keeps any
    partial frame for the next call. Raises `DecodeError` (with `close_code`) on a
    protocol violation, as early as the bytes show it (a header, or the first invalid
    UTF-8 byte of a text message still arriving); the events decoded before it in the same
    input are in the exception's `events`, to be delivered before the connection is closed
    with that code. After a violation or a close frame the reader ignores everything.

    A data frame's payload is unmasked as it arrives and added to the message being built
    (bounded by `max_message` bytes and `max_fragments` frames); control frames (at most
    125 bytes) are taken whole, also between the fragments of a message. With an `inflater`
    (permessage-deflate negotiated) a message whose first frame has RSV1 set is decompressed
    as its frames arrive, never past `max_message` bytes: a deflate bomb is refused with 1009
    once its output reaches the limit, without inflating the rest.
    """

    __slots__ = (
        "_allowed_rsv",
        "_buf",
        "_closed",
        "_compressed",
        "_fragments",
        "_frame_compressed",
        "_frame_fin",
        "_frame_left",
        "_frame_opcode",
        "_inflater",
        "_mask",
        "_mask_at",
        "_message_opcode",
        "_parts",
        "_size",
        "_small_run",
        "_texts",
        "_unmask",
        "_utf8",
        "max_fragments",
        "max_message",
    )

    def __init__(self, max_message: int, max_fragments: int = MAX_FRAGMENTS,
                 inflater: Inflater | None = None, unmask: Unmask = unmask) -> None:
        self.max_message = max_message
        self.max_fragments = max_fragments
        self._unmask = unmask
        #: bytes of an unfinished header or control frame (payload of data frames is never kept here)
        self._buf = bytearray()
        self._closed = False
        #: permessage-deflate, when negotiated: then RSV1 may be set
        self._inflater = inflater
        self._allowed_rsv = 0x40 if inflater is not None else 0
        self._frame_compressed = False
        #: the message being built is compressed
        self._compressed = False
        # the frame being read: payload bytes still to come (-1: waiting for a header)
        self._frame_left = -1
        self._frame_opcode = 0
        self._frame_fin = True
        self._mask = b""
        self._mask_at = 0
        # the data message being built (opcode 0: none): its pieces, unmasked and inflated, joined
        # once at the end; a text message keeps the strings its incremental UTF-8 check decodes
        # instead (`_texts`), so its bytes are decoded once and never joined
        self._message_opcode = 0
        self._parts: list[bytes] = []
        self._texts: list[str] = []
        self._size = 0
        #: pieces shorter than `_SMALL_PIECE` kept in a row, since the last long one or join
        self._small_run = 0
        self._fragments = 0
        self._utf8: codecs.IncrementalDecoder | None = None

    def feed(self, data: bytes) -> list[WebSocketEvent]:
        if self._closed:
            return []
        if self._frame_left < 0 and not self._buf and not self._message_opcode:
            fast = self._single_text_frame(data)
            if fast is not None:
                return [fast]
        events: list[WebSocketEvent] = []
        try:
            self._parse(data, events)
        except DecodeError as exc:
            self._closed = True
            self._buf = bytearray()
            self._parts = []
            self._texts = []
            exc.events = list(events)
            raise
        return events

    def _parse(self, data: bytes, events: list[WebSocketEvent]) -> None:
        # `data` is parsed where it is unless a partial header or control frame waits in `_buf`:
        # a large message's payload is then read straight from each input (unmasked into new
        # bytes, the only copy), never gathered in a buffer first
        buf = self._buf
        if buf:
            buf += data
            src: bytes | bytearray = buf
        else:
            src = data
        unmask = self._unmask
        pos = 0
        n = len(src)
        while True:
            if self._frame_left < 0:
                header = self._header(src, pos, n)
                if header == 0:
                    break
                pos += header
            left = self._frame_left
            opcode = self._frame_opcode
            if opcode >= 0x8:  # a control frame: whole or not at all
                if n - pos < left:
                    break
                payload = unmask(self._mask, bytes(src[pos:pos + left]))
                pos += left
                self._frame_left = -1
                event = self._control(opcode, payload)
                events.append(event)
                if type(event) is CloseReceived:
                    self._closed = True
                    break
                continue
            take = min(left, n - pos)
            # all of `data` is payload (the middle of a large frame): no slice to copy (a C XOR
            # takes `bytes` only, so never `_buf` itself nor a caller's bytearray)
            chunk = src if take == n and type(src) is bytes else bytes(src[pos:pos + take])
            if take == left and self._frame_fin and not self._message_opcode and self._mask_at == 0:
                # a whole unfragmented message in the buffer: no incremental work
                payload = unmask(self._mask, chunk)
                pos += take
                self._frame_left = -1
                if self._frame_compressed:
                    payload = self._inflate_whole(payload)
                events.append(self._whole(opcode, payload))
                continue
            if take:
                self._data(unmask(self._rotated_mask(), chunk))
                pos += take
                self._mask_at += take
                self._frame_left = left = left - take
            if left:
                break  # the rest of this frame is still on its way
            self._frame_left = -1
            if self._frame_fin:
                events.append(self._finish_message())
        if src is buf:
            del buf[:pos]
        elif pos < n:
            buf += src[pos:]

    def _header(self, buf: bytes | bytearray, pos: int, n: int) -> int:
        """Read a frame header at `pos`; return its length (0: incomplete). Checks everything
        the header alone shows, so a bad frame fails before its payload arrives."""
        if n - pos < 2:
            return 0
        b0 = buf[pos]
        b1 = buf[pos + 1]
        if b0 & 0x70 & ~self._allowed_rsv:
            raise DecodeError("reserved bits set without a negotiated extension")
        if not b1 & 0x80:
            raise DecodeError("client frame is not masked")
        opcode = b0 & 0x0F
        fin = bool(b0 & 0x80)
        compressed = bool(b0 & 0x40)
        if compressed and (opcode == 0x0 or opcode >= 0x8):
            raise DecodeError("RSV1 set on a continuation or control frame")
        length = b1 & 0x7F
        offset = pos + 2
        if opcode >= 0x8:
            if opcode > 0xA:
                raise DecodeError(f"unknown opcode {opcode:#x}")
            if length > 125 or not fin:
                raise DecodeError("control frame too long or fragmented")
        elif opcode > 0x2:
            raise DecodeError(f"unknown opcode {opcode:#x}")
        elif opcode == 0x0:
            if not self._message_opcode:
                raise DecodeError("continuation frame without a message to continue")
        elif self._message_opcode:
            raise DecodeError("new message while a fragmented one is unfinished")
        if length == 126:
            if n - offset < 2:
                return 0
            length = int.from_bytes(buf[offset:offset + 2], "big")
            offset += 2
        elif length == 127:
            if n - offset < 8:
                return 0
            length = int.from_bytes(buf[offset:offset + 8], "big")
            if length >> 63:
                raise DecodeError("frame length has the high bit set")
            offset += 8
        if opcode < 0x8:
            if self._size + length > self.max_message:
                raise PayloadTooLarge(f"message exceeds {self.max_message} bytes")
            if not opcode and self._fragments >= self.max_fragments:
                raise PayloadTooLarge(f"message split into more than {self.max_fragments} frames")
        if n - offset < 4:
            return 0
        if opcode < 0x8:
            if opcode:  # the first frame of a message
                self._frame_compressed = compressed
                if not fin or length > n - offset - 4:  # fragmented, or arriving in parts
                    self._start_message(opcode, compressed)
            if self._message_opcode:
                self._fragments += 1
        self._mask = bytes(buf[offset:offset + 4])
        self._mask_at = 0
        self._frame_left = length
        self._frame_opcode = opcode
        self._frame_fin = fin
        return offset + 4 - pos

    def _rotated_mask(self) -> bytes:
        shift = self._mask_at & 3
        mask = self._mask
        return mask[shift:] + mask[:shift] if shift else mask

    def _start_message(self, opcode: int, compressed: bool) -> None:
        self._message_opcode = opcode
        self._compressed = compressed
        self._parts = []
        self._texts = []
        self._size = 0
        self._small_run = 0
        self._fragments = 0
        self._utf8 = _Utf8Decoder() if opcode == Opcode.TEXT else None

    def _data(self, chunk: bytes) -> None:
        """Payload of the message being built, as it arrives; text is checked for UTF-8 at once
        (a peer learns of invalid text when it sends it, not when the message ends)."""
        if self._compressed:
            assert self._inflater is not None
            chunk = self._inflater.feed(chunk, self.max_message - self._size)
        self._append(chunk)

    def _append(self, chunk: bytes) -> None:
        self._size += len(chunk)
        utf8 = self._utf8
        if utf8 is None:
            if chunk:
                self._keep(self._parts, chunk)
            return
        try:
            text = utf8.decode(chunk)
        except UnicodeDecodeError:
            raise _not_utf8() from None
        if text:  # empty: a character cut off, still in the decoder
            self._keep(self._texts, text)

    def _keep(self, pieces: list[AnyStr], piece: AnyStr) -> None:
        pieces.append(piece)
        if len(piece) >= _SMALL_PIECE:
            self._small_run = 0
            return
        self._small_run += 1
        if self._small_run == _SMALL_RUN:  # only pieces kept since the last join: each byte joined once
            self._small_run = 0
            pieces[-_SMALL_RUN:] = [piece[:0].join(pieces[-_SMALL_RUN:])]

    def _finish_message(self) -> TextMessage | BinaryMessage:
        if self._compressed:
            assert self._inflater is not None
            self._compressed = False
            self._append(self._inflater.finish(self.max_message - self._size))
        parts, texts, utf8 = self._parts, self._texts, self._utf8
        self._message_opcode = 0
        self._parts = []
        self._texts = []
        self._size = 0
        self._fragments = 0
        self._utf8 = None
        if utf8 is None:
            return BinaryMessage(b"".join(parts))
        try:
            utf8.decode(b"", True)  # a character cut off at the end
        except UnicodeDecodeError:
            raise _not_utf8() from None
        return TextMessage("".join(texts))

    def _inflate_whole(self, payload: bytes) -> bytes:
        """A compressed message that arrived in one frame, inflated at once (bounded)."""
        inflater = self._inflater
        assert inflater is not None
        out = inflater.feed(payload, self.max_message)
        return out + inflater.finish(self.max_message - len(out))

    @staticmethod
    def _whole(opcode: int, payload: bytes) -> TextMessage | BinaryMessage:
        if opcode == Opcode.TEXT:
            try:
                return TextMessage(payload.decode("utf-8"))
            except UnicodeDecodeError:
                raise _not_utf8() from None
        return BinaryMessage(payload)

    def _single_text_frame(self, data: bytes) -> TextMessage | None:
        """The common case in one step: `data` is exactly one complete, masked, final text frame
        of less than 64 KiB. Anything else (None) takes the general path, which also reports
        every protocol error."""
        n = len(data)
        if n < 6 or data[0] != 0x81:
            return None
        length = data[1] ^ 0x80  # the mask bit must be set: then this is the 7-bit length
        if length < 126:
            offset = 6
        elif length == 126 and n >= 8:
            length = (data[2] << 8) | data[3]
            offset = 8
        else:
            return None  # unmasked (length > 127 after the xor), 64-bit length, or truncated
        if n != offset + length or length > self.max_message:
            return None
        payload = self._unmask(data[offset - 4:offset], data[offset:])
        try:
            return TextMessage(payload.decode("utf-8"))
        except UnicodeDecodeError:
            raise _not_utf8() from None

    def _control(self, opcode: int, payload: bytes) -> Ping | Pong | CloseReceived:
        if opcode == Opcode.PING:
            return Ping(payload)
        if opcode == Opcode.PONG:
            return Pong(payload)
        return self._close(payload)

    @staticmethod
    def _close(payload: bytes) -> CloseReceived:
        if not payload:
            return CloseReceived(CloseCode.NO_STATUS, "")
        if len(payload) == 1:
            raise DecodeError("close frame with a one-byte payload")
        code = int.from_bytes(payload[:2], "big")
        if code not in _VALID_CLOSE_CODES and not 3000 <= code < 5000:
            raise DecodeError(f"invalid close code {code}")
        try:
            reason = payload[2:].decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError("close reason is not valid UTF-8", close_code=CloseCode.INVALID_DATA) from None
        return CloseReceived(code, reason)
