"""Outbound Engine.IO packets encoded once, in the form each transport needs.

A broadcast to a room of a thousand sockets builds one `Outbound`; WebSocket receivers
share its framed bytes (server frames are unmasked, so the bytes are identical for every
receiver) and polling receivers share its payload text. Both forms are computed on first
use and cached; an `Outbound` is immutable once built.

With permessage-deflate the same holds: we never take over compression context between
messages, so a message's compressed frame is the same for every receiver that agreed to the
same `Compression` (window size and threshold): it is compressed once and cached too.
"""

from __future__ import annotations

import base64

from coup.protocol.deflate import Compression
from coup.protocol.engineio import SEPARATOR, EnginePacket, EnginePacketType, encode_text
from coup.protocol.socketio import EncodedPacket
from coup.protocol.websocket import Opcode, encode_frame, encode_text_frame


class Outbound:
    """One or more Engine.IO packets: an optional text packet, then binary MESSAGE packets."""

    __slots__ = ("_poll", "_ws", "_wsz", "_wsz_key", "binaries", "size", "text")

    def __init__(self, text: str | None, binaries: tuple[bytes, ...] = ()) -> None:
        self.text = text
        self.binaries = binaries
        self._ws: bytes | None = None
        self._poll: str | None = None
        #: the frames for receivers that agreed to `_wsz_key` (the first compression asked for)
        self._wsz = b""
        self._wsz_key: Compression | None = None
        #: approximate size in bytes, used to bound per-session queues
        size = len(text) if text is not None else 0
        if binaries:
            size += sum(len(b) for b in binaries)
        self.size = size

    @classmethod
    def message(cls, packet: EncodedPacket) -> Outbound:
        """A Socket.IO packet wrapped in Engine.IO MESSAGE packets (``4`` + text, then attachments)."""
        return cls("4" + packet.text, packet.attachments)

    @classmethod
    def packet(cls, packet: EnginePacket) -> Outbound:
        if isinstance(packet.data, bytes):
            return cls(None, (packet.data,))
        return cls(encode_text(packet))

    def ws_bytes(self) -> bytes:
        """All packets as WebSocket frames, ready to write."""
        ws = self._ws
        if ws is None:
            text = self.text
            if not self.binaries and text is not None:  # the usual packet: one text frame
                ws = self._ws = encode_text_frame(text)
                return ws
            frames = [encode_text_frame(text)] if text is not None else []
            frames.extend(encode_frame(Opcode.BINARY, b) for b in self.binaries)
            ws = self._ws = b"".join(frames)
        return ws

    def ws_deflated(self, compression: Compression) -> bytes:
        """All packets as frames for a receiver that negotiated permessage-deflate: each
        message of at least `compression.threshold` bytes compressed (RSV1 set), the rest as
        in `ws_bytes`. Cached for the first `compression` asked for (in practice there is one
        per server: browsers and Node clients offer the default window)."""
        if self._wsz_key is compression:
            return self._wsz
        threshold = compression.threshold
        text = self.text
        # a text shorter than threshold / 4 characters is short whatever its characters
        encoded = text.encode("utf-8") if text is not None and len(text) * 4 >= threshold else None
        big_text = encoded if encoded is not None and len(encoded) >= threshold else None
        binaries = self.binaries
        if big_text is None and all(len(b) < threshold for b in binaries):
            ws = self.ws_bytes()  # nothing to compress: the plain frames, shared with the others
        else:
            frames = []
            if text is not None:
                frames.append(encode_frame(Opcode.TEXT, compression.compress(big_text), rsv1=True)
                              if big_text is not None else encode_text_frame(text))
            frames.extend(encode_frame(Opcode.BINARY, compression.compress(b), rsv1=True) if len(b) >= threshold
                          else encode_frame(Opcode.BINARY, b) for b in binaries)
            ws = b"".join(frames)
        if self._wsz_key is None:
            self._wsz_key = compression
            self._wsz = ws
        return ws

    def poll_text(self) -> str:
        """All packets as records of a polling payload (joined by the record separator)."""
        poll = self._poll
        if poll is None:
            records = [self.text] if self.text is not None else []
            records.extend("b" + base64.b64encode(b).decode("ascii") for b in self.binaries)
            poll = self._poll = SEPARATOR.join(records)
        return poll

    def __repr__(self) -> str:
        return f"Outbound(text={self.text!r}, binaries={len(self.binaries)})"


PING = Outbound(str(int(EnginePacketType.PING)))
PONG = Outbound(str(int(EnginePacketType.PONG)))
NOOP = Outbound(str(int(EnginePacketType.NOOP)))
CLOSE = Outbound(str(int(EnginePacketType.CLOSE)))
PROBE_PONG = Outbound("3probe")
