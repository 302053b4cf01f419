"""Engine.IO v4 packets and HTTP long-polling payloads.

Wire forms (https://github.com/socketio/engine.io-protocol, v4):

- a text packet is its type digit followed by its data: ``4hello``, ``2``, ``2probe``;
- over WebSocket a binary frame is a MESSAGE packet carrying those bytes, with no prefix;
- a polling payload joins packets with the record separator ``\\x1e``; a binary packet
  inside it is ``b`` followed by the base64 of its bytes.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from enum import IntEnum

from coup.protocol import jsonutil
from coup.protocol.errors import DecodeError, PayloadTooLarge

PROTOCOL_VERSION = 4
SEPARATOR = "\x1e"


class EnginePacketType(IntEnum):
    OPEN = 0
    CLOSE = 1
    PING = 2
    PONG = 3
    MESSAGE = 4
    UPGRADE = 5
    NOOP = 6


_TYPE_BY_CHAR = {str(int(t)): t for t in EnginePacketType}


@dataclass(frozen=True, slots=True)
class EnginePacket:
    """One Engine.IO packet. `data` is bytes only for a binary MESSAGE."""

    type: EnginePacketType
    data: str | bytes = ""

    def __post_init__(self) -> None:
        if isinstance(self.data, bytes) and self.type is not EnginePacketType.MESSAGE:
            raise ValueError("only MESSAGE packets carry binary data")

    @property
    def is_binary(self) -> bool:
        return isinstance(self.data, bytes)


@dataclass(frozen=True, slots=True)
class OpenInfo:
    """The handshake the server sends in its OPEN packet."""

    sid: str
    upgrades: tuple[str, ...]
    ping_interval_ms: int
    ping_timeout_ms: int
    max_payload: int
    extra: dict[str, object] = field(default_factory=dict)

    def to_packet(self) -> EnginePacket:
        body = {
            "sid": self.sid,
            "upgrades": list(self.upgrades),
            "pingInterval": self.ping_interval_ms,
            "pingTimeout": self.ping_timeout_ms,
            "maxPayload": self.max_payload,
            **self.extra,
        }
        return EnginePacket(EnginePacketType.OPEN, jsonutil.dumps(body))


def encode_text(packet: EnginePacket) -> str:
    """Text form of a packet: a WebSocket text frame, or one record of a polling payload.

    A binary MESSAGE gets the polling form ``b<base64>`` (WebSocket sends raw bytes instead,
    see `encode_ws_binary`).
    """
    if isinstance(packet.data, bytes):
        return "b" + base64.b64encode(packet.data).decode("ascii")
    return str(int(packet.type)) + packet.data


def decode_text(text: str) -> EnginePacket:
    """Parse one text packet (a WebSocket text frame or one polling record)."""
    if not text:
        raise DecodeError("empty Engine.IO packet")
    head = text[0]
    if head == "b":
        try:
            return EnginePacket(EnginePacketType.MESSAGE, base64.b64decode(text[1:], validate=True))
        except (binascii.Error, ValueError):
            raise DecodeError("invalid base64 in binary Engine.IO packet") from None
    ptype = _TYPE_BY_CHAR.get(head)
    if ptype is None:
        raise DecodeError("unknown Engine.IO packet type")
    return EnginePacket(ptype, text[1:])


def decode_ws_binary(data: bytes) -> EnginePacket:
    """A WebSocket binary frame is a MESSAGE packet carrying exactly those bytes."""
    return EnginePacket(EnginePacketType.MESSAGE, bytes(data))


def encode_payload(packets: list[EnginePacket]) -> str:
    """Join packets into one polling payload."""
    return SEPARATOR.join(encode_text(p) for p in packets)


def decode_payload(body: bytes | str, *, max_payload: int, max_packets: int = 256) -> list[EnginePacket]:
    """Split and parse a polling payload (the body of a POST).

    Refuses bodies over `max_payload` bytes and payloads of more than `max_packets` packets,
    so one request cannot make the server queue unbounded work.
    """
    if len(body) > max_payload:
        raise PayloadTooLarge(f"payload of {len(body)} bytes exceeds maxPayload {max_payload}")
    if isinstance(body, bytes):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError("polling payload is not valid UTF-8") from None
    else:
        text = body
    records = text.split(SEPARATOR)
    if len(records) > max_packets:
        raise DecodeError(f"polling payload has more than {max_packets} packets")
    return [decode_text(r) for r in records]
