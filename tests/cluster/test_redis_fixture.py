"""The tests' redis-server: a first start whose port was taken meanwhile moves to a free one."""

from __future__ import annotations

import socket

from tests.cluster.conftest import RedisServer


def test_a_first_start_on_a_port_taken_meanwhile_tries_another() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        server = RedisServer()
        server.port = taken.getsockname()[1]  # what another connection's local port can do between the two
        server.start()
        try:
            assert server.port != taken.getsockname()[1]
            assert server.cli("PING") == "PONG"
        finally:
            server.kill()
