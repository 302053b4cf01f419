"""hixie-76, the WebSocket draft of 2010, for SockJS's framed WebSocket URL (opt-in).

The current SockJS protocol revision still checks it (``Websocket.test_haproxy``): HAProxy
of that time forwarded the handshake's head but held back the 8-byte nonce that follows it
until the server answered, so a server must write its 101 head *before* reading the nonce.
Tornado speaks only RFC 6455 (and answers 426), so this module adds the draft behind the
router's ``hixie76`` setting. It is off on the node: no browser made since 2012 speaks it,
and its frames are unmasked, the weakness RFC 6455 fixed (proxy cache poisoning). The
protocol test services turn it on.

The draft, in short: the client sends ``Sec-WebSocket-Key1``/``Key2`` (digits scattered
among spaces) and 8 bytes after the head; the server answers the MD5 of the two key
numbers (digits / spaces, big-endian 32-bit) and those 8 bytes. Text frames are ``0x00``
UTF-8 ``0xFF``; ``0xFF 0x00`` closes. There are no pings, binary messages or close codes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import struct
import sys
from typing import TYPE_CHECKING, Any

from tornado.concurrent import Future
from tornado.httputil import HTTPHeaders
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClosedError, WebSocketProtocol

if TYPE_CHECKING:
    from tornado.websocket import WebSocketHandler

TEXT_START = b"\x00"
TEXT_END = b"\xff"
CLOSE_FRAME = b"\xff\x00"
#: seconds a client may take to send the 8-byte nonce after its head
NONCE_TIMEOUT = 10.0


class HandshakeError(ValueError):
    """A hixie-76 key that does not follow the draft; the request gets 400."""


def is_request(headers: HTTPHeaders) -> bool:
    """Is this upgrade a hixie-76 one (two keys, no RFC 6455 version)?"""
    return ("Sec-WebSocket-Version" not in headers
            and "Sec-WebSocket-Key1" in headers and "Sec-WebSocket-Key2" in headers)


def key_number(key: str) -> int:
    """The number a ``Sec-WebSocket-Key1/2`` stands for: its digits divided by its spaces."""
    digits = "".join(c for c in key if "0" <= c <= "9")
    spaces = key.count(" ")
    if not digits or spaces == 0 or len(digits) > 10:
        raise HandshakeError("a key needs digits and at least one space")
    number, remainder = divmod(int(digits), spaces)
    if remainder or number > 0xFFFFFFFF:
        raise HandshakeError("a key's digits must be a multiple of its spaces")
    return number


def challenge_response(key1: str, key2: str, nonce: bytes) -> bytes:
    """The 16 bytes the server answers the nonce with."""
    if len(nonce) != 8:
        raise HandshakeError("the nonce has 8 bytes")
    return hashlib.md5(struct.pack(">II", key_number(key1), key_number(key2)) + nonce,
                       usedforsecurity=False).digest()


def text_frame(message: str) -> bytes:
    # UTF-8 never contains 0xFF, so the frame needs no escaping
    return TEXT_START + message.encode("utf-8") + TEXT_END


def _close_after(stream: Any, written: Future[None]) -> None:
    if not written.cancelled():
        written.exception()  # a peer already gone is no error
    stream.close()


class Hixie76Protocol(WebSocketProtocol):
    """A server-side hixie-76 connection behind a Tornado `WebSocketHandler`."""

    def __init__(self, handler: WebSocketHandler, max_message_size: int) -> None:
        super().__init__(handler)
        self.max_message_size = max_message_size
        self.close_code: int | None = None
        self.close_reason: str | None = None

    @property
    def selected_subprotocol(self) -> str | None:
        return None

    async def accept_connection(self, handler: WebSocketHandler) -> None:
        request = handler.request
        headers = request.headers
        key1, key2 = headers["Sec-WebSocket-Key1"], headers["Sec-WebSocket-Key2"]
        try:
            key_number(key1), key_number(key2)
            handler.clear_header("Content-Type")
            handler.set_status(101, "WebSocket Protocol Handshake")
            handler.set_header("Upgrade", "WebSocket")
            handler.set_header("Connection", "Upgrade")
            origin = headers.get("Origin")
            if origin is not None:
                handler.set_header("Sec-WebSocket-Origin", origin)
            scheme = "wss" if request.protocol == "https" else "ws"
            handler.set_header("Sec-WebSocket-Location", f"{scheme}://{request.host}{request.uri}")
        except ValueError:  # a bad key, or a header value Tornado refuses to echo
            handler.clear()
            handler.set_status(400)
            handler.finish("Invalid hixie-76 handshake")
            return
        handler.finish()  # the head goes out now, before the nonce arrives (HAProxy)
        stream = self.stream = handler._detach_stream()
        try:
            nonce = await asyncio.wait_for(stream.read_bytes(8), NONCE_TIMEOUT)
            await stream.write(challenge_response(key1, key2, nonce))
        except (StreamClosedError, TimeoutError):
            self._abort()
            handler.on_ws_connection_close(None, None)
            return
        try:
            opened = handler.open(*handler.open_args, **handler.open_kwargs)
            if opened is not None:
                await opened
        except Exception:
            handler.log_exception(*sys.exc_info())
            self._abort()
            handler.on_ws_connection_close(None, None)
            return
        await self._receive_frame_loop()

    async def _receive_frame_loop(self) -> None:
        assert self.stream is not None
        stream = self.stream
        try:
            while not self.client_terminated:
                kind = await stream.read_bytes(1)
                if kind == TEXT_START:
                    data = await stream.read_until(TEXT_END, max_bytes=self.max_message_size + 1)
                    handled = self._run_callback(self.handler.on_message, data[:-1].decode("utf-8"))
                    if handled is not None:
                        await handled
                elif kind == TEXT_END and await stream.read_bytes(1) == b"\x00":
                    self.client_terminated = True
                    self.close()
                else:  # a length-prefixed (binary) frame, or garbage: the draft's text-only peer never sends one
                    self._abort()
        except (StreamClosedError, UnicodeDecodeError):  # a frame past the size limit closes the stream
            self._abort()
        finally:
            self.handler.on_ws_connection_close(self.close_code, self.close_reason)

    def write_message(self, message: str | bytes | dict[str, Any], binary: bool = False) -> Future[None]:
        if binary:
            raise ValueError("hixie-76 carries text only")
        if isinstance(message, dict):
            message = json.dumps(message)
        text = message.decode("utf-8") if isinstance(message, bytes) else message
        if self.stream is None or self.server_terminated:
            raise WebSocketClosedError()
        try:
            written = self.stream.write(text_frame(text))
        except StreamClosedError:
            raise WebSocketClosedError() from None

        async def wrapper() -> None:
            try:
                await written
            except StreamClosedError:
                raise WebSocketClosedError() from None

        return asyncio.ensure_future(wrapper())

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        """Send ``0xFF 0x00`` (the draft has no code or reason) and end the TCP connection."""
        stream = self.stream
        if self.server_terminated or stream is None:
            return
        self.server_terminated = True
        if stream.closed():
            return
        try:
            stream.write(CLOSE_FRAME).add_done_callback(lambda written: _close_after(stream, written))
        except StreamClosedError:
            self._abort()

    def is_closing(self) -> bool:
        return (self.stream is None or self.stream.closed()
                or self.client_terminated or self.server_terminated)

    def write_ping(self, data: bytes) -> None:
        pass  # the draft has no ping; SockJS's own heartbeat frames keep the line busy

    def start_pinging(self) -> None:
        pass

    def set_nodelay(self, x: bool) -> None:
        if self.stream is not None:
            self.stream.set_nodelay(x)

    def _process_server_headers(self, key: str | bytes, headers: HTTPHeaders) -> None:
        raise NotImplementedError("server side only")
