"""The demo page in Chromium over a WebSocket with permessage-deflate negotiated (issue 14).

Chromium offers ``permessage-deflate; client_max_window_bits`` on every WebSocket; with
``COUP_WS_COMPRESSION=1`` the server accepts it. The browser's own record of the handshake
(DevTools protocol, `Network.webSocketHandshakeResponseReceived`) shows the agreed extension,
the node's metrics count it, and the chat works with messages above the threshold.
"""

from __future__ import annotations

import time
import urllib.request
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.demo.conftest import DemoServer

pytestmark = pytest.mark.timeout(180)

METRICS_TOKEN = "demo-compression-metrics-token"


@pytest.fixture
def demo_env() -> dict[str, str]:
    """Compression on, with a threshold a chat message passes."""
    return {"COUP_WS_COMPRESSION": "1", "COUP_WS_COMPRESSION_THRESHOLD": "200", "COUP_METRICS_TOKEN": METRICS_TOKEN}


def _metric(server: DemoServer, line_start: str) -> float:
    request = urllib.request.Request(f"{server.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_demo_page_chats_over_a_compressed_websocket(open_page: Any, server: DemoServer) -> None:
    alice = open_page()
    handshakes: list[dict[str, Any]] = []
    cdp = alice.context.new_cdp_session(alice.page)
    cdp.on("Network.webSocketHandshakeResponseReceived", lambda event: handshakes.append(event["response"]))
    cdp.send("Network.enable")
    alice.sign_in(1)  # the page connects (polling, then the WebSocket upgrade) after this point
    bob = open_page(2)
    expect(alice.page.locator("#transport")).to_have_text("websocket")
    expect(bob.page.locator("#transport")).to_have_text("websocket")

    long_text = "Notes on Dijkstra: relax every edge once the vertex is settled. " * 8  # above 200 bytes
    alice.send(long_text.strip())
    expect(bob.message(long_text.strip())).to_be_visible()
    expect(alice.message(long_text.strip())).to_have_attribute("data-state", "sent")
    bob.send("Short answer")
    expect(alice.message("Short answer")).to_be_visible()

    deadline = time.monotonic() + 10
    while not handshakes and time.monotonic() < deadline:
        alice.page.wait_for_timeout(50)  # lets Playwright deliver the DevTools events
    assert handshakes, "Chromium reported no WebSocket handshake"
    response = handshakes[-1]
    assert response["status"] == 101
    headers = {k.lower(): v for k, v in response["headers"].items()}
    assert headers["sec-websocket-extensions"] == "permessage-deflate; server_no_context_takeover"
    assert _metric(server, 'coup_websocket_compression_total{result="negotiated"}') >= 2  # Alice and Bob
