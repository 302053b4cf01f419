"""WebSocket: Tornado validates and answers the HTTP upgrade, then hands the raw socket over.

After the 101 answer the connection is served by `coup.engine.websocket.WebSocketTransport`,
an asyncio protocol, instead of Tornado's IOStream: a write there is one C call, where
IOStream allocates a Future per write. docs/transports.md gives the measurements.
TLS must be terminated in front of us (a PaaS router or proxy): an SSL stream is refused.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping

from tornado.iostream import IOStream, SSLIOStream, StreamClosedError

from coup.engine.errors import EngineErrorCode, EngineRequestError, UpgradeRefused
from coup.engine.handshake import HandshakeInfo
from coup.engine.server import EngineServer
from coup.engine.websocket import WebSocketTransport
from coup.protocol.deflate import EXTENSION, negotiate
from coup.protocol.websocket import CloseCode, Unmask, accept_key, encode_close_frame, unmask, valid_client_key
from coup.transports.base import EngineRequestHandler
from coup.transports.origins import OriginPolicy

log = logging.getLogger(__name__)


def _switching_protocols(client_key: str, extensions: str | None = None) -> bytes:
    extension = f"Sec-WebSocket-Extensions: {extensions}\r\n" if extensions else ""
    return (
        "HTTP/1.1 101 Switching Protocols\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_key(client_key)}\r\n{extension}\r\n"
    ).encode("ascii")


def take_socket(stream: IOStream) -> tuple[socket.socket, bytes]:
    """Take the socket away from a detached Tornado stream, with any bytes it had read ahead."""
    read_ahead = b""
    buffer = getattr(stream, "_read_buffer", None)
    size = getattr(stream, "_read_buffer_size", 0)
    if buffer is not None and size:
        read_ahead = bytes(buffer[-size:]) if len(buffer) >= size else bytes(buffer)
    fd = os.dup(stream.socket.fileno())
    stream.close()  # closes Tornado's descriptor and its loop registration; ours stays open
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    return sock, read_ahead


def native_unmask() -> Unmask:
    """The fastest XOR with a client's mask here: Tornado's C `websocket_mask` when Tornado was
    built with its extension (20x the pure-Python `unmask` on large messages, 4x on a chat
    message), else the protocol's own. Chosen once, passed down in `EngineOptions.ws_unmask`."""
    try:
        from tornado.speedups import websocket_mask
    except ImportError:  # pragma: no cover - a Tornado without its C extension
        return unmask
    return websocket_mask


class UpgradeRequired(Exception):
    """The client asked for a WebSocket version we do not speak: answer 426 with ours."""


def check_upgrade(engine: EngineServer, origins: OriginPolicy, query: Mapping[str, str],
                  header: Callable[[str], str | None]) -> tuple[str, WebSocketTransport | None]:
    """Validate an upgrade request; return the client key and, for a probe, its transport.

    Shared by the Tornado handler and the front door (`coup.transports.front_door`) so both
    accept exactly the same requests. `header(name)` looks a request header up.
    Raises `EngineRequestError` (answered with the reference's error body) or `UpgradeRequired`.
    """
    engine.check_request(query)
    if (header("Upgrade") or "").lower() != "websocket" or \
            "upgrade" not in (header("Connection") or "").lower():
        raise EngineRequestError(EngineErrorCode.BAD_REQUEST, "not a WebSocket upgrade")
    key = header("Sec-WebSocket-Key") or ""
    if not valid_client_key(key):
        raise EngineRequestError(EngineErrorCode.BAD_REQUEST, "invalid Sec-WebSocket-Key")
    if header("Sec-WebSocket-Version") != "13":
        raise UpgradeRequired()
    if not origins.allows(header("Origin"), header("Host")):
        raise EngineRequestError(EngineErrorCode.FORBIDDEN, f"origin {header('Origin')!r}")
    sid = query.get("sid")
    probe = engine.probe_websocket(sid) if sid is not None else None
    return key, probe


def start_websocket(engine: EngineServer, key: str, probe: WebSocketTransport | None,
                    handshake: Callable[[], HandshakeInfo], extensions: str | None = None) -> WebSocketTransport:
    """The transport that will serve an accepted upgrade, its 101 answer queued first.

    `extensions` is the request's Sec-WebSocket-Extensions: with `ws_compression` on, the
    first permessage-deflate offer we can honour is accepted (`coup.protocol.deflate`)."""
    if probe is not None:
        transport = probe
    else:
        _, transport = engine.open_websocket(handshake())
    options = engine.options
    agreement = negotiate(extensions, options.ws_compression_threshold) if options.ws_compression else None
    if agreement is not None:
        transport.use_deflate(agreement)
    metrics = engine.metrics
    if metrics is not None and extensions and EXTENSION in extensions.lower():
        metrics.ws_compression["negotiated" if agreement is not None else "declined"] += 1
    transport.preamble = _switching_protocols(key, agreement.response if agreement is not None else None)
    return transport


class WebSocketHandler(EngineRequestHandler):
    async def get(self) -> None:
        headers = self.request.headers
        try:
            key, probe = check_upgrade(self.engine, self.origins, self.query(), headers.get)
            if isinstance(getattr(self.request.connection, "stream", None), SSLIOStream):
                raise EngineRequestError(EngineErrorCode.BAD_REQUEST, "TLS must end before coup")
        except UpgradeRequired:
            self.set_header("Sec-WebSocket-Version", "13")
            self.set_status(426)
            self.finish("Upgrade Required")
            return
        except UpgradeRefused as exc:
            # raised by the probe, after check_upgrade validated the key
            log.info("WebSocket for %s refused after the handshake: %s", self.request.uri, exc.detail)
            stream = self.detach()
            try:
                await stream.write(_switching_protocols(headers.get("Sec-WebSocket-Key", ""))
                                   + encode_close_frame(CloseCode.POLICY_VIOLATION))
            except StreamClosedError:
                pass  # the client went away first: nothing left to refuse
            stream.close()
            return
        except EngineRequestError as exc:
            self.refuse(exc)
            return

        sock, read_ahead = take_socket(self.detach())
        transport = start_websocket(self.engine, key, probe, self.handshake_info,
                                    headers.get("Sec-WebSocket-Extensions"))
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(lambda: transport, sock=sock)
        except OSError as exc:
            log.info("WebSocket hand-off failed: %s", exc)
            sock.close()
            transport.connection_lost(exc)
            return
        if read_ahead:
            transport.data_received(read_ahead)
