"""Socket.IO v5 packets, carried inside Engine.IO MESSAGE packets.

Text form (https://github.com/socketio/socket.io-protocol, v5)::

    <type>[<attachments>-][<namespace>,][<ack id>][<JSON data>]

``2["hello",1]``, ``2/admin,["hi"]``, ``312["ok"]``, ``40{"token":"x"}``,
``451-["upload",{"_placeholder":true,"num":0}]`` followed by one binary message.
Binary values travel as attachments: the JSON carries a placeholder per value and each
attachment follows as its own binary Engine.IO message.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from coup.protocol import jsonutil
from coup.protocol.errors import DecodeError, EncodeError

#: event names a peer may not use: they are the client library's own events
RESERVED_EVENTS = frozenset(
    {"connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"}
)
MAX_ACK_ID = 2**53 - 1
_MAX_ACK_DIGITS = 16
_MAX_NAMESPACE_LENGTH = 256


class SocketPacketType(IntEnum):
    CONNECT = 0
    DISCONNECT = 1
    EVENT = 2
    ACK = 3
    CONNECT_ERROR = 4
    BINARY_EVENT = 5
    BINARY_ACK = 6


_BINARY_TYPES = (SocketPacketType.BINARY_EVENT, SocketPacketType.BINARY_ACK)
_TYPE_DIGITS = {t: str(int(t)) for t in SocketPacketType}
#: packet type by its digit's code point minus ord("0")
_TYPES_BY_DIGIT = tuple(SocketPacketType(i) for i in range(7))


@dataclass(frozen=True, slots=True)
class SocketPacket:
    """One Socket.IO packet with its binary values already in place.

    `data` is None when the packet carries no data (a JSON ``null`` is never valid data).
    A packet built with EVENT or ACK whose data holds bytes is sent as BINARY_EVENT /
    BINARY_ACK by `encode`.
    """

    type: SocketPacketType
    namespace: str = "/"
    data: Any = None
    id: int | None = None

    def __post_init__(self) -> None:
        if self.id is not None and not (0 <= self.id <= MAX_ACK_ID):
            raise ValueError(f"ack id out of range: {self.id}")
        if not self.namespace.startswith("/"):
            raise ValueError("namespace must start with '/'")


@dataclass(frozen=True, slots=True)
class EncodedPacket:
    """A packet on the wire: one text message plus its binary attachments, in order."""

    text: str
    attachments: tuple[bytes, ...] = ()


# ---------------------------------------------------------------------------- encode


def _has_binary(value: Any) -> bool:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return True
    if isinstance(value, list | tuple):
        return any(_has_binary(v) for v in value)
    if isinstance(value, dict):
        return any(_has_binary(v) for v in value.values())
    return False


def _deconstruct(value: Any, out: list[bytes]) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        out.append(bytes(value))
        return {"_placeholder": True, "num": len(out) - 1}
    if isinstance(value, list | tuple):
        return [_deconstruct(v, out) for v in value]
    if isinstance(value, dict):
        return {k: _deconstruct(v, out) for k, v in value.items()}
    return value


def encode(packet: SocketPacket) -> EncodedPacket:
    """Encode a packet; binary values inside EVENT / ACK data become attachments."""
    ptype = packet.type
    data = packet.data
    if (ptype is SocketPacketType.EVENT or ptype is SocketPacketType.ACK) and data is not None:
        # Fast path: JSON first. Data holding bytes cannot be JSON-encoded (TypeError), so only
        # then do we walk it for binary values; that walk cost more than the encode itself.
        try:
            text = jsonutil.encode_plain(data)
        except TypeError:
            pass
        else:
            head = _TYPE_DIGITS[ptype]
            if packet.namespace != "/":
                head += packet.namespace + ","
            if packet.id is not None:
                head += str(packet.id)
            return EncodedPacket(head + text)
    attachments: list[bytes] = []
    if data is not None and ptype in (SocketPacketType.EVENT, SocketPacketType.ACK, *_BINARY_TYPES):
        if _has_binary(data):
            data = _deconstruct(data, attachments)
            ptype = SocketPacketType.BINARY_EVENT if ptype in (
                SocketPacketType.EVENT, SocketPacketType.BINARY_EVENT) else SocketPacketType.BINARY_ACK
        elif ptype in _BINARY_TYPES:
            ptype = SocketPacketType.EVENT if ptype is SocketPacketType.BINARY_EVENT else SocketPacketType.ACK
    parts = [str(int(ptype))]
    if ptype in _BINARY_TYPES:
        parts.append(f"{len(attachments)}-")
    if packet.namespace != "/":
        parts.append(packet.namespace)
        parts.append(",")
    if packet.id is not None:
        parts.append(str(packet.id))
    if data is not None:
        parts.append(jsonutil.dumps(data))
    return EncodedPacket("".join(parts), tuple(attachments))


def encode_event(namespace: str, args: list[Any] | tuple[Any, ...], ack_id: int | None = None) -> EncodedPacket:
    """Shortcut for the hot path: an EVENT whose first element is the event name."""
    if ack_id is None and namespace == "/" and not _has_binary(args):
        return EncodedPacket("2" + jsonutil.dumps(args))
    return encode(SocketPacket(SocketPacketType.EVENT, namespace, list(args), ack_id))


def stamp_offset(text: str, offset: int | str) -> str:
    """An encoded EVENT with a connection-state-recovery offset appended as its last argument,
    without re-encoding: its data is a JSON array, so its text ends with ``]`` and
    ``2["a",1]`` becomes ``2["a",1,"7"]`` (what `encode` gives for the packet with the offset).
    `offset` is the recovery log's (an int) or log groups' vector as text (``"7.12"``)."""
    return f'{text[:-1]},"{offset}"]'


# ---------------------------------------------------------------------------- decode


def _valid_payload(ptype: SocketPacketType, data: Any) -> bool:
    if ptype is SocketPacketType.CONNECT:
        return isinstance(data, dict)
    if ptype is SocketPacketType.DISCONNECT:
        return False  # DISCONNECT carries no data
    if ptype is SocketPacketType.CONNECT_ERROR:
        return isinstance(data, str | dict)
    if ptype in (SocketPacketType.EVENT, SocketPacketType.BINARY_EVENT):
        if not isinstance(data, list) or not data:
            return False
        name = data[0]
        if isinstance(name, bool):
            return False
        return isinstance(name, int | float) or (isinstance(name, str) and name not in RESERVED_EVENTS)
    return isinstance(data, list)  # ACK, BINARY_ACK


def _parse_header(text: str) -> tuple[SocketPacket, int]:
    """Parse everything but attachments; return the packet and its announced attachment count."""
    if not text:
        raise DecodeError("empty Socket.IO packet")
    head = text[0]
    if head == "2" and text[1:2] == "[":
        # the usual packet, an EVENT to "/" without ack id: what the general path below does
        # for it, without scanning for a namespace and an id
        data = jsonutil.loads(text[1:])
        if not _valid_payload(SocketPacketType.EVENT, data):
            raise DecodeError("invalid payload for EVENT")
        return SocketPacket(SocketPacketType.EVENT, "/", data), 0
    if not ("0" <= head <= "6"):
        raise DecodeError("unknown Socket.IO packet type")
    ptype = _TYPES_BY_DIGIT[ord(head) - 48]
    i = 1
    n = len(text)
    attachments = 0
    if ptype in _BINARY_TYPES:
        dash = text.find("-", i)
        digits = text[i:dash] if dash != -1 else ""
        if not digits.isdigit() or not digits.isascii() or len(digits) > 6:
            raise DecodeError("invalid attachment count")
        attachments = int(digits)
        i = dash + 1
    namespace = "/"
    if i < n and text[i] == "/":
        comma = text.find(",", i)
        end = comma if comma != -1 else n
        namespace = text[i:end]
        if len(namespace) > _MAX_NAMESPACE_LENGTH:
            raise DecodeError("namespace too long")
        i = end + 1 if comma != -1 else n
    ack_id = None
    j = i
    while j < n and "0" <= text[j] <= "9":
        j += 1
    if j > i:
        if j - i > _MAX_ACK_DIGITS:
            raise DecodeError("ack id too long")
        ack_id = int(text[i:j])
        if ack_id > MAX_ACK_ID:
            raise DecodeError("ack id out of range")
        i = j
    data = None
    if i < n:
        data = jsonutil.loads(text[i:])
        if not _valid_payload(ptype, data):
            raise DecodeError(f"invalid payload for {ptype.name}")
    elif ptype in (SocketPacketType.EVENT, SocketPacketType.BINARY_EVENT,
                   SocketPacketType.ACK, SocketPacketType.BINARY_ACK, SocketPacketType.CONNECT_ERROR):
        raise DecodeError(f"{ptype.name} without payload")
    if ack_id is not None and ptype not in (SocketPacketType.EVENT, SocketPacketType.BINARY_EVENT,
                                            SocketPacketType.ACK, SocketPacketType.BINARY_ACK):
        raise DecodeError(f"{ptype.name} cannot carry an ack id")
    if (ptype in (SocketPacketType.ACK, SocketPacketType.BINARY_ACK)) and ack_id is None:
        raise DecodeError("ACK without id")
    return SocketPacket(ptype, namespace, data, ack_id), attachments


def _reconstruct(value: Any, attachments: list[bytes], used: set[int]) -> Any:
    if isinstance(value, dict):
        if value.get("_placeholder") is True and "num" in value and len(value) == 2:
            num = value["num"]
            if isinstance(num, bool) or not isinstance(num, int) or not 0 <= num < len(attachments):
                raise DecodeError("placeholder refers to a missing attachment")
            used.add(num)
            return attachments[num]
        return {k: _reconstruct(v, attachments, used) for k, v in value.items()}
    if isinstance(value, list):
        return [_reconstruct(v, attachments, used) for v in value]
    return value


class SocketDecoder:
    """Reassembles Socket.IO packets from the Engine.IO messages of one connection.

    Feed each text message to `feed_text` and each binary message to `feed_binary`; each
    returns a complete `SocketPacket`, or None while attachments are still expected.
    Any `DecodeError` leaves the decoder unusable: the connection must be closed.
    """

    __slots__ = ("_broken", "_buffers", "_expected", "_pending", "max_attachments")

    def __init__(self, max_attachments: int = 10) -> None:
        self.max_attachments = max_attachments
        self._pending: SocketPacket | None = None
        self._expected = 0
        self._buffers: list[bytes] = []
        self._broken = False

    @property
    def awaiting_attachments(self) -> bool:
        return self._pending is not None

    def _fail(self, reason: str) -> DecodeError:
        self._broken = True
        return DecodeError(reason)

    def feed_text(self, text: str) -> SocketPacket | None:
        if self._broken:
            raise DecodeError("decoder already failed")
        if self._pending is not None:
            raise self._fail("text message while binary attachments were expected")
        try:
            packet, count = _parse_header(text)
        except DecodeError:
            self._broken = True
            raise
        if packet.type not in _BINARY_TYPES:
            if count:
                raise self._fail("attachments announced on a non-binary packet")
            return packet
        if count > self.max_attachments:
            raise self._fail(f"{count} attachments exceed the limit of {self.max_attachments}")
        if count == 0:
            return self._finish(packet, [])
        self._pending = packet
        self._expected = count
        self._buffers = []
        return None

    def feed_binary(self, data: bytes) -> SocketPacket | None:
        if self._broken:
            raise DecodeError("decoder already failed")
        if self._pending is None:
            raise self._fail("binary message without a packet announcing it")
        self._buffers.append(bytes(data))
        if len(self._buffers) < self._expected:
            return None
        packet, buffers = self._pending, self._buffers
        self._pending, self._buffers, self._expected = None, [], 0
        return self._finish(packet, buffers)

    def _finish(self, packet: SocketPacket, buffers: list[bytes]) -> SocketPacket:
        used: set[int] = set()
        try:
            data = _reconstruct(packet.data, buffers, used)
        except DecodeError:
            self._broken = True
            raise
        if len(used) != len(buffers):
            raise self._fail("attachment without a placeholder")
        return SocketPacket(packet.type, packet.namespace, data, packet.id)


def decode_text(text: str) -> SocketPacket:
    """Decode a text packet that carries no attachments (a convenience for tables and tests)."""
    decoder = SocketDecoder(max_attachments=0)
    packet = decoder.feed_text(text)
    if packet is None:
        raise DecodeError("packet expects binary attachments")
    return packet


__all__ = [
    "RESERVED_EVENTS",
    "EncodeError",
    "EncodedPacket",
    "SocketDecoder",
    "SocketPacket",
    "SocketPacketType",
    "decode_text",
    "encode",
    "encode_event",
]
