"""RFC 6455 WebSocket framing for the server side, sans-I/O.

`FrameReader` turns bytes from a client into events; `encode_frame` builds unmasked
server frames. Server frames need no mask, so a broadcast is framed once and the same
bytes go to every receiver (see `coup.protocol.wire`).

Only what a Socket.IO server needs: no extensions (RSV bits must be zero, nothing is
negotiated), fragmented messages reassembled up to `max_message`, control frames
answered by the I/O layer from the events returned here.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import dataclass
from enum import IntEnum

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


def encode_frame(opcode: Opcode, payload: bytes, *, fin: bool = True) -> bytes:
    """One unmasked frame (server to client)."""
    first = (0x80 if fin else 0) | int(opcode)
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


def unmask(payload: bytes, mask: bytes) -> bytes:
    """XOR `payload` with the 4-byte `mask`, using one big-integer XOR instead of a byte loop."""
    n = len(payload)
    if n == 0:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


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


class FrameReader:
    """Incremental parser of client frames.

    ``events = reader.feed(data)``: returns the complete events found so far; keeps any
    partial frame for the next call. Raises `DecodeError` (with `close_code`) on a
    protocol violation; after that the connection must be closed with that code.
    """

    __slots__ = ("_buf", "_closed", "_fragment_opcode", "_fragment_size", "_fragments", "max_message")

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self._buf = bytearray()
        self._fragments: list[bytes] = []
        self._fragment_opcode: Opcode | None = None
        self._fragment_size = 0
        self._closed = False

    def feed(self, data: bytes) -> list[WebSocketEvent]:
        if self._closed:
            return []
        if not self._buf and self._fragment_opcode is None:
            fast = self._single_text_frame(data)
            if fast is not None:
                return [fast]
        buf = self._buf
        buf += data
        events: list[WebSocketEvent] = []
        pos = 0
        n = len(buf)
        while n - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            if b0 & 0x70:
                raise DecodeError("reserved bits set without a negotiated extension")
            if not b1 & 0x80:
                raise DecodeError("client frame is not masked")
            length = b1 & 0x7F
            offset = pos + 2
            if length == 126:
                if n - offset < 2:
                    break
                length = int.from_bytes(buf[offset:offset + 2], "big")
                offset += 2
            elif length == 127:
                if n - offset < 8:
                    break
                length = int.from_bytes(buf[offset:offset + 8], "big")
                if length >> 63:
                    raise DecodeError("frame length has the high bit set")
                offset += 8
            opcode_value = b0 & 0x0F
            fin = bool(b0 & 0x80)
            is_control = opcode_value >= 0x8
            if is_control and (length > 125 or not fin):
                raise DecodeError("control frame too long or fragmented")
            if not is_control and self._fragment_size + length > self.max_message:
                raise PayloadTooLarge(f"message exceeds {self.max_message} bytes")
            if n - offset < 4 + length:
                break
            mask = bytes(buf[offset:offset + 4])
            offset += 4
            payload = unmask(bytes(buf[offset:offset + length]), mask)
            pos = offset + length
            event = self._frame(opcode_value, fin, payload)
            if event is not None:
                events.append(event)
                if isinstance(event, CloseReceived):
                    self._closed = True
                    break
        del buf[:pos]
        return events

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
        payload = unmask(data[offset:], data[offset - 4:offset])
        try:
            return TextMessage(payload.decode("utf-8"))
        except UnicodeDecodeError:
            raise DecodeError("text message is not valid UTF-8", close_code=CloseCode.INVALID_DATA) from None

    def _frame(self, opcode_value: int, fin: bool, payload: bytes) -> WebSocketEvent | None:
        try:
            opcode = Opcode(opcode_value)
        except ValueError:
            raise DecodeError(f"unknown opcode {opcode_value:#x}") from None
        if opcode is Opcode.PING:
            return Ping(payload)
        if opcode is Opcode.PONG:
            return Pong(payload)
        if opcode is Opcode.CLOSE:
            return self._close(payload)
        if opcode is Opcode.CONTINUATION:
            if self._fragment_opcode is None:
                raise DecodeError("continuation frame without a message to continue")
            self._fragments.append(payload)
            self._fragment_size += len(payload)
            if not fin:
                return None
            opcode = self._fragment_opcode
            payload = b"".join(self._fragments)
            self._fragments, self._fragment_opcode, self._fragment_size = [], None, 0
        elif self._fragment_opcode is not None:
            raise DecodeError("new message while a fragmented one is unfinished")
        elif not fin:
            self._fragment_opcode = opcode
            self._fragments = [payload]
            self._fragment_size = len(payload)
            return None
        if opcode is Opcode.TEXT:
            try:
                return TextMessage(payload.decode("utf-8"))
            except UnicodeDecodeError:
                raise DecodeError("text message is not valid UTF-8", close_code=CloseCode.INVALID_DATA) from None
        return BinaryMessage(payload)

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
