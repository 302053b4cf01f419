"""A raw WebSocket client for tests: it sends whatever frames a test crafts, valid or not.

Real client libraries refuse to send unmasked frames, bad close codes or oversized control
frames, and they keep reading whatever the server sends; the malformed-input, slow-consumer
and Origin tests need a client that does exactly what it is told and nothing else.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, masked: bool = True,
                 mask: bytes = b"\x37\xfa\x21\x3d") -> bytes:
    """One client frame; by default as RFC 6455 requires (masked, no RSV bits)."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    mask_bit = 0x80 if masked else 0
    if n < 126:
        header = struct.pack("!BB", first, mask_bit | n)
    elif n < 65536:
        header = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, n)
    if not masked:
        return header + payload
    key = (mask * (n // 4 + 1))[:n]  # one big-integer XOR: a bytewise loop takes seconds on 16 MiB
    body = (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")
    return header + mask + body


def text(message: str) -> bytes:
    return client_frame(OP_TEXT, message.encode("utf-8"))


def binary(data: bytes) -> bytes:
    return client_frame(OP_BINARY, data)


def close_frame(code: int | None = 1000, reason: bytes = b"") -> bytes:
    return client_frame(OP_CLOSE, b"" if code is None else struct.pack("!H", code) + reason)


@dataclass
class Frame:
    opcode: int
    payload: bytes
    #: the RSV bits (0b100: RSV1, a permessage-deflate compressed message)
    rsv: int = 0

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8")

    @property
    def close_code(self) -> int | None:
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None


class HandshakeRefused(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body!r}")
        self.status = status
        self.body = body


class RawWebSocket:
    """``ws = await RawWebSocket.connect(port, "/socket.io/?EIO=4&transport=websocket")``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes = b"") -> None:
        self.reader = reader
        self.writer = writer
        #: the server's 101 answer (status line and headers)
        self.head = head

    @classmethod
    async def connect(cls, port: int, path: str, *, origin: str | None = None,
                      receive_buffer: int | None = None, extensions: str | None = None) -> RawWebSocket:
        """Open and upgrade; raise `HandshakeRefused` with the status and body of a refusal.

        `receive_buffer` shrinks the kernel receive buffer, for clients that stop reading;
        `extensions` is sent as Sec-WebSocket-Extensions.
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=2**22)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        if origin is not None:
            lines.append(f"Origin: {origin}")
        if extensions is not None:
            lines.append(f"Sec-WebSocket-Extensions: {extensions}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 101:
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = await reader.readexactly(length) if length else b""
            writer.close()
            raise HandshakeRefused(status, body)
        return cls(reader, writer, head)

    def header(self, name: str) -> str | None:
        """A header of the 101 answer."""
        for line in self.head.decode("latin-1").split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None

    def send(self, data: bytes) -> None:
        """Write raw bytes (one or more frames, or a part of one)."""
        self.writer.write(data)

    def send_text(self, message: str) -> None:
        self.writer.write(text(message))

    async def recv(self, timeout: float = 3.0) -> Frame:
        """The next frame from the server (server frames are never masked or fragmented here)."""
        async with asyncio.timeout(timeout):
            b0, b1 = await self.reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", await self.reader.readexactly(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", await self.reader.readexactly(8))[0]
            return Frame(b0 & 0x0F, await self.reader.readexactly(n), (b0 >> 4) & 0b111)

    async def recv_text(self, timeout: float = 3.0, *, skip_pings: bool = True) -> str:
        """The next text message, skipping Engine.IO pings ("2") unless asked not to."""
        while True:
            frame = await self.recv(timeout)
            if frame.opcode != OP_TEXT:
                raise AssertionError(f"expected a text frame, got opcode {frame.opcode}: {frame.payload!r}")
            if skip_pings and frame.payload == b"2":
                continue
            return frame.text

    async def expect_close(self, timeout: float = 3.0) -> int | None:
        """Read until the server's close frame; return its code. Fails on anything but close/ping."""
        while True:
            frame = await self.recv(timeout)
            if frame.opcode == OP_CLOSE:
                return frame.close_code
            if frame.opcode == OP_TEXT and frame.payload in (b"2", b"6"):
                continue
            raise AssertionError(f"expected a close frame, got {frame.opcode}: {frame.payload[:80]!r}")

    async def expect_eof(self, timeout: float = 3.0) -> None:
        """The server closed the TCP connection (after anything it still had to send)."""
        async with asyncio.timeout(timeout):
            while await self.reader.read(65536):
                pass

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass


async def emit_with_ack(ws: RawWebSocket, acks: dict[int, asyncio.Future[Any]], ack_id: int, event: str,
                        payload: Any, timeout: float) -> Any:
    """Send a Socket.IO EVENT with ack id `ack_id` on the main namespace and await its ACK, which
    the caller's reader resolves through `acks` (the benchmarks' raw clients share this)."""
    future = acks[ack_id] = asyncio.get_running_loop().create_future()
    ws.send_text(f"42{ack_id}" + json.dumps([event, payload]))
    try:
        return await asyncio.wait_for(future, timeout)
    finally:
        acks.pop(ack_id, None)


def settle_ack(waiting: dict[int, asyncio.Future[Any]], message: str) -> None:
    """An ACK packet ("43<id>[...]"): hand its first argument (None for an empty ack) to whoever waits for that id."""
    digits = ""
    for ch in message[2:]:
        if not ch.isdigit():
            break
        digits += ch
    future = waiting.get(int(digits)) if digits else None
    if future is not None and not future.done():
        args = json.loads(message[2 + len(digits):])
        future.set_result(args[0] if args else None)


async def socketio_events(ws: RawWebSocket, acks: dict[int, asyncio.Future[Any]],
                          idle: float = 120) -> AsyncIterator[list[Any]]:
    """The arguments of every EVENT on the main namespace, as they arrive; PINGs are answered
    and ACKs settled in `acks` on the way (the read loop of `emit_with_ack`'s callers)."""
    while True:
        message = await ws.recv_text(idle, skip_pings=False)
        if message == "2":
            ws.send_text("3")
        elif message.startswith("42"):
            yield json.loads(message[2:])
        elif message.startswith("43"):
            settle_ack(acks, message)
