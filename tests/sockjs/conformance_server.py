"""The SockJS protocol's test services on our fixed sockjs-tornado transports.

    python tests/sockjs/conformance_server.py --port 8081

serves ``/echo``, ``/close``, ``/disabled_websocket_echo`` and ``/cookie_needed_echo`` as
the official suite (sockjs/sockjs-protocol: ``sockjs-protocol.py``, the current revision, and
``sockjs-protocol-0.3.3.py``) expects them, with the 4 KiB streaming response limit the
suite asks test servers to use and hixie-76 on (docs/sockjs-conformance.md). It exercises the
same router, session and handler classes as the node's ``/sockjs`` endpoint, with plain
echo connections instead of the Socket.IO bridge.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import warnings
from typing import Any

warnings.filterwarnings("ignore", "@asynchronous is deprecated", DeprecationWarning)

from sockjs.tornado import SockJSConnection  # noqa: E402
from tornado.httpserver import HTTPServer  # noqa: E402
from tornado.web import Application  # noqa: E402

from coup.transports.arrival import ArrivalHTTPServer  # noqa: E402
from coup.transports.sockjs.router import SockJSRouter  # noqa: E402

#: the suite asks for a 4 KiB streaming limit; its test_haproxy speaks hixie-76
TEST_SETTINGS = {"response_limit": 4096, "hixie76": True}


class EchoConnection(SockJSConnection):  # type: ignore[misc]
    def on_message(self, message: Any) -> None:
        self.send(message)


class CloseConnection(SockJSConnection):  # type: ignore[misc]
    def on_open(self, info: Any) -> None:
        self.close()

    def on_message(self, message: Any) -> None:
        pass


def build_routers() -> list[SockJSRouter]:
    """The four services; call inside the running loop (the routers' timers need it)."""
    return [
        SockJSRouter(EchoConnection, "/echo", TEST_SETTINGS),
        SockJSRouter(CloseConnection, "/close", TEST_SETTINGS),
        SockJSRouter(EchoConnection, "/disabled_websocket_echo",
                     {**TEST_SETTINGS, "disabled_transports": ["websocket"]}),
        SockJSRouter(EchoConnection, "/cookie_needed_echo", {**TEST_SETTINGS, "jsessionid": True}),
    ]


def build_server(routers: list[SockJSRouter]) -> HTTPServer:
    """The HTTP server of `routers`, built as the node builds its own (arrival order kept)."""
    rules: list[Any] = [rule for router in routers for rule in router.urls]
    return ArrivalHTTPServer(Application(rules))


async def serve(host: str, port: int) -> None:
    routers = build_routers()
    server = build_server(routers)
    server.listen(port, host)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    logging.info("SockJS test services on http://%s:%d", host, port)
    await stop.wait()
    server.stop()
    for router in routers:
        router.close()
    await server.close_all_connections()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
