"""What travels between nodes through Redis, and how it is framed.

A broadcast is ``B`` + a small JSON header + ``\\n`` + the Socket.IO packet text, encoded
once by the sender: receivers hand the same text to their sockets without decoding the
event (the header never contains a raw newline, JSON escapes it). Everything else
(requests, replies, room commands, membership announcements) is ``J`` + one JSON object
with a type field ``t``. Binary attachments ride base64 in the header.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from coup.protocol import jsonutil
from coup.protocol.socketio import EncodedPacket, SocketDecoder, SocketPacket

BROADCAST = b"B"
JSON = b"J"


@dataclass(frozen=True, slots=True)
class Broadcast:
    origin: str
    #: unique message id (origin + counter): receivers drop the copies of a multi-room broadcast
    mid: str
    nsp: str
    rooms: tuple[str, ...]
    exclude: tuple[str, ...]
    #: the packet takes a connection-state-recovery offset (an event without ack id)
    stamp: bool
    packet: EncodedPacket


def encode_broadcast(message: Broadcast) -> bytes:
    header: list[Any] = [message.origin, message.mid, message.nsp, message.rooms, message.exclude,
                         1 if message.stamp else 0]
    if message.packet.attachments:
        header.append([base64.b64encode(a).decode("ascii") for a in message.packet.attachments])
    return b"".join((BROADCAST, jsonutil.dumps(header).encode(), b"\n", message.packet.text.encode()))


def origin_prefix(node_id: str) -> bytes:
    """How a broadcast from `node_id` starts: a node skips its own without parsing them."""
    return BROADCAST + jsonutil.dumps([node_id]).encode()[:-1] + b","


def decode_broadcast(data: bytes) -> Broadcast:
    header_raw, _, text = data[1:].partition(b"\n")
    header = jsonutil.loads(header_raw.decode())
    attachments = tuple(base64.b64decode(a) for a in header[6]) if len(header) > 6 else ()
    return Broadcast(header[0], header[1], header[2], tuple(header[3]), tuple(header[4]), bool(header[5]),
                     EncodedPacket(text.decode(), attachments))


def encode_json(message: dict[str, Any]) -> bytes:
    return JSON + jsonutil.dumps(message).encode()


def decode_json(data: bytes) -> dict[str, Any]:
    message = jsonutil.loads(data[1:].decode())
    if not isinstance(message, dict):
        raise ValueError("cluster message is not an object")
    return message


def decode_packet(packet: EncodedPacket) -> SocketPacket:
    """The packet an encoded text (and attachments) stands for."""
    decoder = SocketDecoder(max_attachments=max(len(packet.attachments), 1))
    result = decoder.feed_text(packet.text)
    for attachment in packet.attachments:
        result = decoder.feed_binary(attachment)
    if result is None:
        raise ValueError("incomplete packet")
    return result
