"""A raw WebSocket echo endpoint on our own WebSocket code, for Autobahn|Testsuite's fuzzingclient.

    python tests/conformance/autobahn_echo.py --port 9001 [--max-payload BYTES] [--max-fragments N]
        [--compression] [--threshold BYTES]

Autobahn speaks plain WebSocket, not Engine.IO, so this endpoint skips the Engine.IO
session: after a minimal HTTP upgrade (any path) the connection is served by the very
`WebSocketTransport` (`coup/engine/websocket.py`) and `FrameReader`
(`coup/protocol/websocket.py`) that serve Socket.IO clients, with `EchoSession` where an
Engine.IO session would be: every text message comes back as text, every binary message
as binary. Pings, close handshakes, protocol errors and limits are the transport's own.
With `--compression` permessage-deflate offers are negotiated by `coup.protocol.deflate.negotiate`,
exactly as `coup.transports.websocket.start_websocket` does for Socket.IO clients.

`tests/conformance/run_autobahn.py` starts this and runs the suite; docs/autobahn.md has
the setup and the result.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import cast

if __name__ == "__main__":  # run as a script from a checkout: make `coup` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from coup.engine.options import EngineOptions
from coup.engine.websocket import WebSocketTransport, WriteCoalescer
from coup.protocol.deflate import negotiate
from coup.protocol.engineio import EnginePacket
from coup.protocol.errors import DecodeError
from coup.protocol.websocket import accept_key, valid_client_key
from coup.protocol.wire import Outbound
from coup.transports.websocket import native_unmask

log = logging.getLogger("autobahn-echo")


class _Options:
    """The part of an `EngineServer` a WebSocket transport reads: its options (and no metrics)."""

    metrics = None

    def __init__(self, options: EngineOptions) -> None:
        self.options = options


class EchoSession:
    """Stands where an Engine.IO session would: sends back what the transport hands it."""

    upgrading = None

    def __init__(self, server: _Options, sid: str) -> None:
        self.server = server
        self.sid = sid
        self.transport: WebSocketTransport | None = None

    def receive_text(self, text: str) -> None:
        assert self.transport is not None
        self.transport.send(Outbound(text))

    def receive(self, packet: EnginePacket) -> None:
        assert self.transport is not None
        self.transport.send(Outbound(None, (cast(bytes, packet.data),)))

    def protocol_error(self, exc: DecodeError) -> None:  # pragma: no cover - echo decodes nothing
        log.info("%s: %s", self.sid, exc.reason)

    def transport_closed(self, transport: WebSocketTransport, reason: str) -> None:
        pass

    def finish_graceful_close(self) -> None:
        pass


class UpgradeProtocol(asyncio.Protocol):
    """Reads the HTTP upgrade, answers 101, then hands the connection to `WebSocketTransport`."""

    count = 0

    def __init__(self, server: _Options, coalescer: WriteCoalescer) -> None:
        self.server = server
        self.coalescer = coalescer
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > 16384:
                self.transport.close()
            return
        head, rest = self.buffer[:end].decode("latin-1"), self.buffer[end + 4:]
        headers = {}
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        key = headers.get("sec-websocket-key", "")
        if headers.get("upgrade", "").lower() != "websocket" or not valid_client_key(key):
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.transport.close()
            return
        UpgradeProtocol.count += 1
        session = EchoSession(self.server, f"echo-{UpgradeProtocol.count}")
        ws = WebSocketTransport(session, self.coalescer, probing=False)  # type: ignore[arg-type]
        session.transport = ws
        options = self.server.options
        agreement = negotiate(headers.get("sec-websocket-extensions"), options.ws_compression_threshold) \
            if options.ws_compression else None
        extension = ""
        if agreement is not None:
            ws.use_deflate(agreement)
            extension = f"Sec-WebSocket-Extensions: {agreement.response}\r\n"
        ws.preamble = ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                       f"Sec-WebSocket-Accept: {accept_key(key)}\r\n{extension}\r\n").encode("ascii")
        transport = self.transport
        self.transport = None
        transport.set_protocol(ws)
        ws.connection_made(transport)
        if rest:
            ws.data_received(rest)


async def serve(port: int, options: EngineOptions) -> None:
    loop = asyncio.get_running_loop()
    server, coalescer = _Options(options), WriteCoalescer(loop)
    listener = await loop.create_server(lambda: UpgradeProtocol(server, coalescer), "127.0.0.1", port)
    print(f"autobahn echo on ws://127.0.0.1:{port}/ (max payload {options.max_payload}, "
          f"max fragments {options.max_fragments}, compression {options.ws_compression})", flush=True)
    async with listener:
        await listener.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = EngineOptions()  # a slots dataclass: its class attributes are descriptors, not values
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--max-payload", type=int, default=defaults.max_payload)
    parser.add_argument("--max-fragments", type=int, default=defaults.max_fragments)
    parser.add_argument("--compression", action="store_true", help="negotiate permessage-deflate")
    parser.add_argument("--threshold", type=int, default=defaults.ws_compression_threshold)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    options = EngineOptions(max_payload=args.max_payload, max_fragments=args.max_fragments,
                            max_buffered_bytes=64 * 1024 * 1024, ws_compression=args.compression,
                            ws_compression_threshold=args.threshold, ws_unmask=native_unmask())
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(serve(args.port, options))
    else:
        uvloop.run(serve(args.port, options))


if __name__ == "__main__":
    main()
