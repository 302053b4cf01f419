"""The demo page behind a proxy that refuses WebSocket (issue 14): SockJS and Socket.IO polling.

A real HAProxy (tests/demo/proxy.py) stands between Chromium and `coup serve --demo` and
answers 403 to every request asking for an ``Upgrade``. Over each transport sockjs-client
uses in Chromium, Alice and Bob (both in study 1) chat both ways, see each other come and
go (presence), and the ConnectionBanner follows a server restart; the stock
socket.io-client does the same over long-polling through the same proxy. sockjs-client's
own WebSocket transport cannot pass that proxy; it is tested against the node directly.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.conftest import require
from tests.demo.conftest import ARTIFACTS, DemoPage, DemoServer
from tests.demo.proxy import WebSocketStrippingProxy, haproxy_path

pytestmark = pytest.mark.timeout(240)

#: what sockjs-client 1.6 can use in Chromium besides WebSocket (the xdr-* ones are IE's);
#: the iframe-* ones run the transport inside /sockjs/iframe.html
SOCKJS_HTTP_TRANSPORTS = ["xhr-streaming", "xhr-polling", "eventsource", "iframe-eventsource", "htmlfile",
                          "iframe-htmlfile", "iframe-xhr-polling", "jsonp-polling"]
RECONNECTING = "재연결 시도 중..."


@pytest.fixture
def proxy(server: DemoServer, tmp_path: Any, request: pytest.FixtureRequest) -> Iterator[WebSocketStrippingProxy]:
    executable = haproxy_path()
    require(executable is not None, "haproxy (apt-get install haproxy)")
    assert executable is not None
    log = ARTIFACTS / f"{request.node.name}.haproxy.log"
    log.unlink(missing_ok=True)
    running = WebSocketStrippingProxy(executable, server.port, tmp_path, log)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def record_websockets(tab: DemoPage) -> list[str]:
    opened: list[str] = []
    tab.page.on("websocket", lambda ws: opened.append(ws.url))
    return opened


def chat_and_presence(alice: DemoPage, bob: DemoPage, tag: str) -> None:
    """Both directions of chat, acks, and each seeing the other online."""
    expect(alice.member(2)).to_have_attribute("data-online", "true")
    expect(bob.member(1)).to_have_attribute("data-online", "true")
    alice.send(f"Alice over {tag}")
    expect(bob.message(f"Alice over {tag}")).to_be_visible()
    expect(alice.message(f"Alice over {tag}")).to_have_attribute("data-state", "sent")  # the ack came back
    bob.send(f"Bob over {tag}")
    expect(alice.message(f"Bob over {tag}")).to_be_visible()
    expect(bob.message(f"Bob over {tag}")).to_have_attribute("data-state", "sent")


def banner_follows_a_restart(server: DemoServer, *tabs: DemoPage) -> None:
    server.stop()
    for tab in tabs:
        expect(tab.page.locator("#banner")).to_be_visible()
        expect(tab.page.locator("#banner-text")).to_have_text(RECONNECTING)
    server.start()
    for tab in tabs:
        expect(tab.page.locator("#banner")).to_be_hidden()
        tab.wait_ready()


@pytest.mark.parametrize("transport", SOCKJS_HTTP_TRANSPORTS)
def test_demo_page_over_each_sockjs_transport_behind_the_proxy(
        open_page: Any, server: DemoServer, proxy: WebSocketStrippingProxy, transport: str) -> None:
    query = f"?transport=sockjs&sockjs={transport}"
    alice = open_page(query=query, base=proxy.url)
    websockets = record_websockets(alice)
    alice.sign_in(1)
    bob = open_page(2, query=query, base=proxy.url)
    for tab in (alice, bob):
        expect(tab.page.locator("#transport")).to_have_text(f"sockjs/{transport}")
    chat_and_presence(alice, bob, transport)
    alice.shot(f"sockjs-{transport}")

    banner_follows_a_restart(server, alice, bob)
    expect(alice.page.locator("#transport")).to_have_text(f"sockjs/{transport}")
    alice.send(f"after the restart, over {transport}")
    expect(bob.message(f"after the restart, over {transport}")).to_be_visible()

    bob.page.close()  # presence: Alice sees Bob leave
    expect(alice.member(2)).to_have_attribute("data-online", "false")
    assert websockets == []  # only the transport asked for


def test_sockjs_falls_back_from_the_refused_websocket_behind_the_proxy(
        open_page: Any, proxy: WebSocketStrippingProxy) -> None:
    """sockjs-client's own choice: WebSocket first; the proxy refuses it; xhr-streaming next."""
    alice = open_page(query="?transport=sockjs", base=proxy.url)
    websockets = record_websockets(alice)
    alice.sign_in(1)
    bob = open_page(2, query="?transport=sockjs", base=proxy.url)
    for tab in (alice, bob):
        expect(tab.page.locator("#transport")).to_have_text("sockjs/xhr-streaming")
    assert any(re.search(r"/sockjs/\d+/\w+/websocket$", url) for url in websockets), websockets
    chat_and_presence(alice, bob, "the fallback")


def test_demo_page_over_sockjs_websocket(open_page: Any, server: DemoServer) -> None:
    """The WebSocket transport of sockjs-client, straight to the node (the proxy refuses it)."""
    query = "?transport=sockjs&sockjs=websocket"
    alice = open_page(1, query=query)
    bob = open_page(2, query=query)
    for tab in (alice, bob):
        expect(tab.page.locator("#transport")).to_have_text("sockjs/websocket")
    chat_and_presence(alice, bob, "websocket")
    banner_follows_a_restart(server, alice, bob)
    bob.send("back over websocket")
    expect(alice.message("back over websocket")).to_be_visible()
    bob.page.close()
    expect(alice.member(2)).to_have_attribute("data-online", "false")


@pytest.mark.parametrize("query", ["?transport=polling", ""])
def test_socketio_client_over_polling_behind_the_proxy(
        open_page: Any, server: DemoServer, proxy: WebSocketStrippingProxy, query: str) -> None:
    """The stock socket.io-client: polling only, or its default polling-then-upgrade, whose
    upgrade the proxy refuses, so it stays on polling."""
    alice = open_page(query=query, base=proxy.url)
    websockets = record_websockets(alice)
    alice.sign_in(1)
    bob = open_page(2, query=query, base=proxy.url)
    for tab in (alice, bob):
        expect(tab.page.locator("#transport")).to_have_text("polling")
    chat_and_presence(alice, bob, f"socket.io polling {query or 'default'}")
    banner_follows_a_restart(server, alice, bob)
    alice.send("polling after the restart")
    expect(bob.message("polling after the restart")).to_be_visible()
    expect(alice.page.locator("#transport")).to_have_text("polling")
    if query == "":
        assert websockets, "the default client tries the upgrade, which the proxy refuses"
    else:
        assert websockets == []
