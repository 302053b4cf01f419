"""Conformance server for the official engine.io-protocol and socket.io-protocol test suites.

    python tests/conformance/server.py --port PORT

serves, on 127.0.0.1:PORT,

- ``/engine.io/``: Engine.IO only; every message (text or binary) is echoed back;
- ``/socket.io/``: Socket.IO on namespaces ``/`` and ``/custom``.

Both use pingInterval 300 ms, pingTimeout 200 ms and maxPayload 1,000,000, the values the
suites assert, connectTimeout 1 s and any origin, as the socket.io-protocol README configures
the reference server. The Socket.IO handlers are the ones the suites expect: on connect, emit
``auth`` with the handshake auth; ``message`` is answered with ``message-back`` and the same
arguments; ``message-with-ack`` is acknowledged with the same arguments. Connection state
recovery is off: the suites compare packets byte for byte, and recovery would append an
offset to every event.

Our own pytest cases (`tests/conformance/test_*_protocol.py`) start the same server
in-process through `ConformanceServer`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import sys
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as a script from a checkout: make `coup` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tornado.httpserver import HTTPServer
from tornado.web import Application

from coup.core.options import ServerOptions
from coup.core.server import SocketServer
from coup.core.socket import Socket
from coup.engine.options import EngineOptions
from coup.engine.server import EngineServer
from coup.engine.session import Session
from coup.protocol.engineio import EnginePacket, EnginePacketType
from coup.protocol.wire import Outbound
from coup.transports.origins import OriginPolicy
from coup.transports.routing import engine_rules

PING_INTERVAL = 0.3
PING_TIMEOUT = 0.2
MAX_PAYLOAD = 1_000_000
#: what the suite's README asks of the reference server (connectTimeout: 1000)
CONNECT_TIMEOUT = 1.0


def engine_options() -> EngineOptions:
    return EngineOptions(ping_interval=PING_INTERVAL, ping_timeout=PING_TIMEOUT, max_payload=MAX_PAYLOAD)


class EchoHandler:
    """Engine.IO-only application: send every message back as it came (text or binary)."""

    def on_message(self, session: Session, data: str | bytes) -> None:
        session.send(Outbound.packet(EnginePacket(EnginePacketType.MESSAGE, data)))

    def on_close(self, session: Session, reason: str) -> None:
        pass


def attach_echo(session: Session) -> None:
    session.handler = EchoHandler()


def install_handlers(sio: SocketServer) -> None:
    """The handlers the official socket.io-protocol suite expects."""

    async def send_auth(socket: Socket) -> None:
        socket.emit("auth", socket.auth)

    def message(socket: Socket, args: list[Any]) -> None:
        socket.emit("message-back", *args)

    def message_with_ack(socket: Socket, args: list[Any]) -> tuple[Any, ...]:
        return tuple(args)

    main = sio.of("/")
    main.on_connect(send_auth)
    main.on("message", message)
    main.on("message-with-ack", message_with_ack)
    sio.of("/custom").on_connect(send_auth)


class ConformanceServer:
    """Both endpoints on one Tornado HTTP server. Build and start it inside the running loop."""

    def __init__(self, origins: OriginPolicy | None = None) -> None:
        self.origins = origins or OriginPolicy(["*"])
        self.echo = EngineServer(engine_options(), on_connection=attach_echo)
        self.sio = SocketServer(EngineServer(engine_options()),
                                ServerOptions(connect_timeout=CONNECT_TIMEOUT, recovery=None))
        install_handlers(self.sio)
        self.http_server: HTTPServer | None = None

    def application(self) -> Application:
        return Application([
            *engine_rules("/engine.io/", self.echo, self.origins),
            *engine_rules("/socket.io/", self.sio.engine, self.origins),
        ])

    async def start(self, sockets: list[socket.socket]) -> None:
        await self.sio.start()
        self.http_server = HTTPServer(self.application(), max_body_size=MAX_PAYLOAD + 64 * 1024)
        self.http_server.add_sockets(sockets)

    async def stop(self) -> None:
        if self.http_server is not None:
            self.http_server.stop()
        self.echo.close_all()
        await self.sio.close()
        if self.http_server is not None:
            await self.http_server.close_all_connections()
            self.http_server = None


async def serve(host: str, port: int) -> None:
    from tornado.netutil import bind_sockets

    server = ConformanceServer()
    await server.start(bind_sockets(port, host))
    logging.getLogger("coup").info("conformance server on http://%s:%d/ (/engine.io/, /socket.io/)", host, port)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(args.host, args.port))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
