"""A minimal Socket.IO client over the raw WebSocket, for core tests that assert packet by packet.

It answers Engine.IO pings and reassembles binary packets, nothing more: no reconnection, no
buffering, no acknowledgement bookkeeping, so a test sees every packet the server sends in
the order it sent them. (The stock clients are exercised in tests/clients and tests/js.)
"""

from __future__ import annotations

import json
from typing import Any

from coup.protocol.socketio import SocketDecoder, SocketPacket, SocketPacketType, encode
from tests.wsclient import OP_BINARY, OP_CLOSE, OP_TEXT, RawWebSocket, binary


class Closed(Exception):
    """The server closed the connection; `code` is its close code."""

    def __init__(self, code: int | None) -> None:
        super().__init__(f"closed with {code}")
        self.code = code


class SioClient:
    def __init__(self, ws: RawWebSocket, engine_sid: str) -> None:
        self.ws = ws
        self.engine_sid = engine_sid
        self.decoder = SocketDecoder(max_attachments=1000)
        #: namespace -> the CONNECT reply's data ({"sid": ..., "pid": ...})
        self.connected: dict[str, dict[str, Any]] = {}

    @classmethod
    async def open(cls, ws: RawWebSocket) -> SioClient:
        """Read the Engine.IO OPEN packet of a fresh WebSocket session."""
        first = await ws.recv_text()
        assert first[0] == "0", first
        return cls(ws, json.loads(first[1:])["sid"])

    async def connect(self, namespace: str = "/", auth: dict[str, Any] | None = None) -> dict[str, Any]:
        """Join a namespace; return the CONNECT reply data, or raise AssertionError on CONNECT_ERROR."""
        self.send(SocketPacket(SocketPacketType.CONNECT, namespace, auth))
        packet = await self.packet()
        assert packet.type is SocketPacketType.CONNECT and packet.namespace == namespace, packet
        self.connected[namespace] = packet.data
        return dict(packet.data)

    def send(self, packet: SocketPacket) -> None:
        encoded = encode(packet)
        self.ws.send_text("4" + encoded.text)
        for attachment in encoded.attachments:
            self.ws.send(binary(attachment))

    def emit(self, event: str, *args: Any, ack: int | None = None, namespace: str = "/") -> None:
        self.send(SocketPacket(SocketPacketType.EVENT, namespace, [event, *args], ack))

    def ack(self, ack_id: int, *args: Any, namespace: str = "/") -> None:
        self.send(SocketPacket(SocketPacketType.ACK, namespace, list(args), ack_id))

    async def packet(self, timeout: float = 3.0) -> SocketPacket:
        """The next Socket.IO packet (Engine.IO pings are answered on the way)."""
        while True:
            frame = await self.ws.recv(timeout)
            if frame.opcode == OP_CLOSE:
                raise Closed(frame.close_code)
            if frame.opcode == OP_TEXT:
                text = frame.text
                if text == "2":
                    self.ws.send_text("3")
                    continue
                assert text[0] == "4", text
                result = self.decoder.feed_text(text[1:])
            else:
                assert frame.opcode == OP_BINARY
                result = self.decoder.feed_binary(frame.payload)
            if result is not None:
                return result

    async def event(self, timeout: float = 3.0) -> list[Any]:
        """The next EVENT's data (event name first), whatever its namespace."""
        packet = await self.packet(timeout)
        assert packet.type in (SocketPacketType.EVENT, SocketPacketType.BINARY_EVENT), packet
        return list(packet.data)

    async def closed(self, timeout: float = 3.0) -> int | None:
        """Wait for the server to close; return the close code. Packets before it are skipped."""
        while True:
            try:
                await self.packet(timeout)
            except Closed as exc:
                return exc.code

    async def close(self) -> None:
        await self.ws.close()


async def sio_connect(server: Any, namespace: str = "/", auth: dict[str, Any] | None = None) -> SioClient:
    """A WebSocket session to `server` (a tests.servers.RunningServer) joined to `namespace`."""
    client = await SioClient.open(await server.websocket())
    await client.connect(namespace, auth)
    return client
