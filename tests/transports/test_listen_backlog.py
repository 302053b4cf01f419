"""The listening socket's accept queue is the configured one, not asyncio's default of 100.

In a reconnect storm (every client of a restarted node at once) a full accept queue drops SYNs
and each drop costs a client a 1 s retransmit; the kernel reports a listening socket's backlog
as its Send-Q, which is what these tests read from the real `coup serve` process.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.adversarial.target import Target
from tests.conftest import require


def _listen_backlog(port: int) -> int:
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    rows = [line.split() for line in out.splitlines() if line.strip()]
    assert rows, f"nothing listens on {port}"
    return int(rows[0][2])  # State Recv-Q Send-Q ...: Send-Q is the backlog of a listening socket


def _somaxconn() -> int:
    return int(Path("/proc/sys/net/core/somaxconn").read_text())


@pytest.mark.parametrize(("env", "expected"), [({}, 4096), ({"COUP_LISTEN_BACKLOG": "777"}, 777)])
def test_coup_serve_listens_with_the_configured_backlog(tmp_path: Path, env: dict[str, str], expected: int) -> None:
    require(shutil.which("ss") is not None, "ss (iproute2) reads the listening socket's backlog")
    require(_somaxconn() >= expected, "net.core.somaxconn caps the backlog below what this test expects")
    target = Target(tmp_path, env).start()
    try:
        assert _listen_backlog(target.port) == expected
    finally:
        target.stop()
