"""A real HAProxy that refuses WebSocket, started on a free loopback port in front of a node.

It stands for the corporate proxies SockJS exists for: plain HTTP passes (long-polling,
streaming answers, the page itself), any request asking for an ``Upgrade`` gets 403, so a
browser's WebSocket never opens and its client must fall back to an HTTP transport.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tornado.testing import bind_unused_port

CONFIG = """\
global
    maxconn 512
    # one line per request (with how it ended) in the test's haproxy.log artifact
    log stdout format raw local0 info

defaults
    mode http
    log global
    option httplog
    # pass a browser's hang-up on to the node at once (as nginx does by default)
    option abortonclose
    timeout connect 5s
    timeout http-request 10s
    # longer than SockJS's 25 s heartbeat and a held long-poll
    timeout client 75s
    timeout server 75s

frontend browsers
    bind 127.0.0.1:{port}
    # no WebSocket through this proxy: refuse every upgrade
    http-request deny deny_status 403 if {{ req.hdr(upgrade) -m found }}
    default_backend node

backend node
    server node 127.0.0.1:{backend_port}
"""


def haproxy_path() -> str | None:
    return shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if Path(p).exists()), None)


class WebSocketStrippingProxy:
    """``haproxy -db`` (foreground) with `CONFIG`; stopped by its PID."""

    def __init__(self, executable: str, backend_port: int, workdir: Path, log_path: Path) -> None:
        sock, self.port = bind_unused_port()
        sock.close()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = workdir / "haproxy.cfg"
        self.config.write_text(CONFIG.format(port=self.port, backend_port=backend_port))
        self.executable = executable
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([self.executable, "-db", "-f", str(self.config)],
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited with {self.proc.returncode}; see {self.log_path}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"haproxy did not listen on {self.port}; see {self.log_path}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
