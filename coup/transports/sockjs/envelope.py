"""The JSON envelope CoUp speaks inside SockJS messages, translated to and from Socket.IO packets.

A SockJS message is a string; ours is one JSON object with a ``type``. The bridge turns
what a client sends into the Socket.IO packet a Socket.IO client would have sent, and the
packets the core sends into envelopes, so a SockJS connection reaches the same
middleware, handlers, rooms and adapter as any Socket.IO socket.

Client to server::

    {"type": "auth", "auth": {...}, "nsp": "/"}          first message (nsp optional)
    {"type": "event", "event": "message", "args": [...], "ack": 3}   ack optional
    {"type": "ack", "id": 7, "args": [...]}             answers a server event's "ack"
    {"type": "disconnect"}                              leave (the connection closes)

Server to client::

    {"type": "connect", "sid": "...", "pid": "..."}     auth accepted
    {"type": "connect_error", "message": "...", "data": ...}   auth refused (send auth again)
    {"type": "event", "event": "...", "args": [...], "ack": 7}  ack only when one is expected
    {"type": "ack", "id": 3, "args": [...]}
    {"type": "disconnect"}                              the server ended the session
    {"type": "error", "code": "...", "message": "..."}  the last message broke the protocol;
                                                        the connection closes after it

``args`` are the event's arguments exactly as a Socket.IO client receives them: with
connection-state recovery on, the server's offset string is the last one. Binary values
(which JSON cannot carry) arrive as ``{"_binary": "<base64>"}``. Pure functions only.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from coup.protocol import jsonutil
from coup.protocol.errors import DecodeError
from coup.protocol.socketio import (
    MAX_ACK_ID,
    RESERVED_EVENTS,
    SocketDecoder,
    SocketPacket,
    SocketPacketType,
)
from coup.protocol.wire import Outbound

#: close codes the bridge uses in SockJS close frames (4000-4999 are the application's)
CLOSE_SERVER = 4000
CLOSE_PROTOCOL = 4400
CLOSE_TOO_LARGE = 4413


class EnvelopeError(Exception):
    """The client's message is not a valid envelope; `code` is what the client is told."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Inbound:
    """One decoded client message: an auth request, or a packet for the socket."""

    kind: str  # "auth" | "event" | "ack" | "disconnect"
    namespace: str = "/"
    auth: dict[str, Any] | None = None
    packet: SocketPacket | None = None


def _ack_id(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ACK_ID:
        raise EnvelopeError("BAD_MESSAGE", f'"{field}" must be an integer from 0 to 2^53-1')
    return value


def _args(message: dict[str, Any]) -> list[Any]:
    args = message.get("args", [])
    if not isinstance(args, list):
        raise EnvelopeError("BAD_MESSAGE", '"args" must be an array')
    return args


def decode_inbound(text: Any, namespace: str) -> Inbound:
    """Parse one SockJS message from the client; `namespace` is the one it authenticated to."""
    if not isinstance(text, str):
        raise EnvelopeError("BAD_MESSAGE", "messages must be JSON text")
    try:
        message = jsonutil.loads(text)
    except DecodeError:
        raise EnvelopeError("BAD_MESSAGE", "message is not valid JSON") from None
    if not isinstance(message, dict):
        raise EnvelopeError("BAD_MESSAGE", "message must be a JSON object")
    kind = message.get("type")
    if kind == "event":
        event = message.get("event")
        if not isinstance(event, str) or not event:
            raise EnvelopeError("BAD_MESSAGE", '"event" must be a non-empty string')
        if event in RESERVED_EVENTS:
            raise EnvelopeError("BAD_MESSAGE", f"{event!r} is a reserved event name")
        ack = message.get("ack")
        ack_id = None if ack is None else _ack_id(ack, "ack")
        packet = SocketPacket(SocketPacketType.EVENT, namespace, [event, *_args(message)], ack_id)
        return Inbound("event", namespace, packet=packet)
    if kind == "ack":
        packet = SocketPacket(SocketPacketType.ACK, namespace, _args(message), _ack_id(message.get("id"), "id"))
        return Inbound("ack", namespace, packet=packet)
    if kind == "auth":
        auth = message.get("auth", {})
        if not isinstance(auth, dict):
            raise EnvelopeError("BAD_MESSAGE", '"auth" must be an object')
        nsp = message.get("nsp", "/")
        if not isinstance(nsp, str) or not nsp.startswith("/") or len(nsp) > 256:
            raise EnvelopeError("BAD_MESSAGE", '"nsp" must be a namespace such as "/"')
        return Inbound("auth", nsp, auth=auth)
    if kind == "disconnect":
        return Inbound("disconnect", namespace)
    raise EnvelopeError("BAD_MESSAGE", 'unknown message "type" (auth, event, ack or disconnect)')


def _binary_to_json(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"_binary": base64.b64encode(value).decode("ascii")}
    if isinstance(value, list):
        return [_binary_to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _binary_to_json(v) for k, v in value.items()}
    return value


def packet_envelope(packet: SocketPacket) -> dict[str, Any]:
    """The envelope for a packet the core sends to a client."""
    ptype = packet.type
    if ptype in (SocketPacketType.EVENT, SocketPacketType.BINARY_EVENT):
        data = _binary_to_json(packet.data) if ptype is SocketPacketType.BINARY_EVENT else packet.data
        body: dict[str, Any] = {"type": "event", "event": data[0], "args": data[1:]}
        if packet.id is not None:
            body["ack"] = packet.id
        return body
    if ptype in (SocketPacketType.ACK, SocketPacketType.BINARY_ACK):
        data = _binary_to_json(packet.data) if ptype is SocketPacketType.BINARY_ACK else packet.data
        return {"type": "ack", "id": packet.id, "args": data}
    if ptype is SocketPacketType.CONNECT:
        body = {"type": "connect"}
        if isinstance(packet.data, dict):
            body.update({k: v for k, v in packet.data.items() if k in ("sid", "pid")})
        return body
    if ptype is SocketPacketType.CONNECT_ERROR:
        body = {"type": "connect_error"}
        if isinstance(packet.data, dict):
            body.update(packet.data)
        else:
            body["message"] = str(packet.data)
        return body
    return {"type": "disconnect"}


def outbound_packet(out: Outbound) -> SocketPacket | None:
    """The Socket.IO packet inside core output (None for Engine.IO-level packets)."""
    text = out.text
    if text is None or not text.startswith("4"):
        return None
    decoder = SocketDecoder(max_attachments=len(out.binaries))
    packet = decoder.feed_text(text[1:])
    for attachment in out.binaries:
        packet = decoder.feed_binary(attachment)
    return packet


def error_envelope(error: EnvelopeError) -> str:
    return jsonutil.dumps({"type": "error", "code": error.code, "message": error.message})


def dumps(envelope: dict[str, Any]) -> str:
    return jsonutil.dumps(envelope)
