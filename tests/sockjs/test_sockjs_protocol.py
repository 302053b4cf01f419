"""The current SockJS protocol revision, behaviour by behaviour, on our own services.

The official suite (sockjs/sockjs-protocol, ``sockjs-protocol.py``) stays out of the repo
(docs/sockjs-conformance.md says how to run it); these tests hold each behaviour it checks
and the 0.3.3 revision did not: ``no-transform``, exact content types, the JSONP ``/**/``
prefix, callback validation, ``null`` origins with credentials, close reasons, the iframe
page, info and OPTIONS answers, and the hixie-76 handshake of ``test_haproxy``. They run
against the very services ``tests/sockjs/conformance_server.py`` serves to the suite.
Expected headers and pages are spelled out here, not imported, so that changing a constant
in the code fails a test.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
import uuid
from collections.abc import AsyncIterator
from urllib.parse import quote

import aiohttp
import pytest
import pytest_asyncio
from tornado.testing import bind_unused_port
from tornado.websocket import websocket_connect
from yarl import URL

from coup.transports.origins import OriginPolicy
from coup.transports.sockjs import hixie76
from coup.transports.sockjs.handlers import websocket_close_code
from coup.transports.sockjs.router import SockJSRouter
from tests.conftest import RunningNode
from tests.sockjs.conformance_server import EchoConnection, build_routers, build_server
from tests.sockjs.conftest import read_until

pytestmark = pytest.mark.asyncio

NO_CACHE = "no-store, no-cache, no-transform, must-revalidate, max-age=0"
YEAR = "public, max-age=31536000"
JAVASCRIPT = "application/javascript; charset=UTF-8"
TEXT = "text/plain; charset=UTF-8"
HTML = "text/html; charset=UTF-8"
IFRAME_PAGE = """<!DOCTYPE html>
<html>
<head>
  <meta http-equiv="X-UA-Compatible" content="IE=edge" />
  <meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
  <script src="%s"></script>
  <script>
    document.domain = document.domain;
    SockJS.bootstrap_iframe();
  </script>
</head>
<body>
  <h2>Don't panic!</h2>
  <p>This is a SockJS hidden iframe. It's used for cross domain magic.</p>
</body>
</html>"""


class Suite:
    """The protocol's test services, plus routers with an origin policy and small limits."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.host = url.removeprefix("http://")

    def session(self, service: str = "echo") -> str:
        return f"{self.url}/{service}/000/{uuid.uuid4()}"

    async def raw(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        host, port = self.host.split(":")
        return await asyncio.open_connection(host, int(port))


@pytest_asyncio.fixture
async def suite() -> AsyncIterator[Suite]:
    routers = [
        *build_routers(),
        # as on a node: hixie-76 off, origins checked
        SockJSRouter(EchoConnection, "/strict", {}, origins=OriginPolicy(["http://good.example"])),
        SockJSRouter(EchoConnection, "/files", {}, origins=OriginPolicy(["null"])),
        SockJSRouter(EchoConnection, "/small", {"hixie76": True}, max_message_size=64),
        SockJSRouter(EchoConnection, "/quoted", {"sockjs_url": '/x".js?a=<b>'}),
    ]
    server = build_server(routers)
    sock, port = bind_unused_port()
    server.add_sockets([sock])
    try:
        yield Suite(f"http://127.0.0.1:{port}")
    finally:
        server.stop()
        for router in routers:
            router.close()
        await server.close_all_connections()


def exact(url: str) -> URL:
    """A URL sent as written (aiohttp would re-encode a query like ``c=%20``)."""
    return URL(url, encoded=True)


# ---------------------------------------------------------------------- headers


@pytest.mark.parametrize(("method", "suffix", "content_type"), [
    ("POST", "xhr", JAVASCRIPT),
    ("POST", "xhr_streaming", JAVASCRIPT),
    ("GET", "eventsource", "text/event-stream"),  # bare: 0.3.3 had "; charset=UTF-8"
    ("GET", "htmlfile?c=cb", HTML),
    ("GET", "jsonp?c=cb", JAVASCRIPT),
])
async def test_session_answers_are_private_and_untransformed(
        suite: Suite, http: aiohttp.ClientSession, method: str, suffix: str, content_type: str) -> None:
    async with http.request(method, f"{suite.session()}/{suffix}") as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == content_type
        assert r.headers["Cache-Control"] == NO_CACHE  # no-transform: proxies must not recompress or buffer
        for header in ("Expires", "Last-Modified", "ETag", "Set-Cookie"):
            assert header not in r.headers


async def test_send_and_info_answers_are_private_too(suite: Suite, http: aiohttp.ClientSession) -> None:
    base = suite.session()
    async with http.post(base + "/xhr") as r:
        assert await r.text() == "o\n"
    async with http.post(base + "/xhr_send", data='["x"]') as r:
        assert r.status == 204
        assert r.headers["Content-Type"] == TEXT  # Tornado strips it from a 204; Firefox wants it
        assert r.headers["Cache-Control"] == NO_CACHE
    async with http.post(base + "/jsonp_send", data="d=%5B%22y%22%5D",
                         headers={"Content-Type": "application/x-www-form-urlencoded"}) as r:
        assert (r.status, await r.text()) == (200, "ok")
        assert r.headers["Content-Type"] == TEXT
        assert r.headers["Cache-Control"] == NO_CACHE
    async with http.get(suite.url + "/echo/info") as r:
        assert r.headers["Content-Type"] == "application/json; charset=UTF-8"
        assert r.headers["Cache-Control"] == NO_CACHE
        assert "ETag" not in r.headers
    async with http.get(suite.url + "/echo") as r:
        assert (r.status, await r.text()) == (200, "Welcome to SockJS!\n")
        assert r.headers["Content-Type"] == TEXT
        assert r.headers["Cache-Control"] == YEAR


# ---------------------------------------------------------------------- JSONP


async def test_jsonp_answers_start_with_an_empty_comment(suite: Suite, http: aiohttp.ClientSession) -> None:
    """``/**/`` first: no answer can begin with bytes the client chose (the Rosetta Flash attack)."""
    base = suite.session()
    async with http.get(base + "/jsonp", params={"c": "cb"}) as r:
        assert await r.text() == '/**/cb("o");\r\n'
        assert r.headers["X-Content-Type-Options"] == "nosniff"
    async with http.post(base + "/jsonp_send", data='["x"]', headers={"Content-Type": "text/plain"}) as r:
        assert await r.text() == "ok"
    async with http.get(base + "/jsonp", params={"c": "cb"}) as r:
        assert await r.text() == '/**/cb("a[\\"x\\"]");\r\n'

    closing = suite.session("close")
    for expected in ('/**/x("o");\r\n', '/**/x("c[3000,\\"Go away!\\"]");\r\n', '/**/x("c[3000,\\"Go away!\\"]");\r\n'):
        async with http.get(closing + "/jsonp", params={"c": "x"}) as r:
            assert await r.text() == expected


# ---------------------------------------------------------------------- callbacks

BAD_CALLBACKS = [" ", "*", "abc(", "alert(1)//", "</script><script>x", "cb;evil", "$x", "x\u00e9", "a" * 33]
GOOD_CALLBACKS = ["_jp.a1b2c3", "a-b_c.D9", "x" * 32]


@pytest.mark.parametrize("transport", ["jsonp", "htmlfile"])
@pytest.mark.parametrize("callback", BAD_CALLBACKS)
async def test_invalid_callbacks_are_refused_before_a_session_opens(
        suite: Suite, http: aiohttp.ClientSession, transport: str, callback: str) -> None:
    base = suite.session()
    async with http.get(exact(f"{base}/{transport}?c={quote(callback, safe='')}")) as r:
        assert r.status == 500
        assert await r.text() == 'invalid "callback" parameter'
        assert r.headers["Content-Type"] == TEXT
    async with http.post(base + "/xhr_send", data='["x"]') as r:
        assert r.status == 404  # no session was opened


@pytest.mark.parametrize("transport", ["jsonp", "htmlfile"])
async def test_a_missing_callback_is_refused(suite: Suite, http: aiohttp.ClientSession, transport: str) -> None:
    async with http.get(f"{suite.session()}/{transport}") as r:
        assert r.status == 500
        assert await r.text() == '"callback" parameter required'


@pytest.mark.parametrize("callback", GOOD_CALLBACKS)
async def test_valid_callbacks_are_served(suite: Suite, http: aiohttp.ClientSession, callback: str) -> None:
    async with http.get(suite.session() + "/jsonp", params={"c": callback}) as r:
        assert await r.text() == f'/**/{callback}("o");\r\n'
    async with http.get(suite.session() + "/htmlfile", params={"c": callback}) as r:
        page = await read_until(r, b'p("o")')
        assert f"var c = parent.{callback};".encode() in page


# ---------------------------------------------------------------------- CORS


@pytest.mark.parametrize(("path", "methods"), [
    ("/echo/000/s/xhr", "OPTIONS, POST"),
    ("/echo/000/s/xhr_send", "OPTIONS, POST"),
    ("/echo/000/s/xhr_streaming", "OPTIONS, POST"),
    ("/echo/info", "OPTIONS, GET"),
])
@pytest.mark.parametrize("origin", ["null", "https://app.example"])
async def test_preflights_echo_the_origin_null_included_with_credentials(
        suite: Suite, http: aiohttp.ClientSession, path: str, methods: str, origin: str) -> None:
    """``null`` (a page from file://, a sandboxed frame) is echoed, not answered ``*`` as in 0.3.3:
    browsers refuse ``*`` on a request that carries credentials."""
    headers = {"Origin": origin, "Access-Control-Request-Method": methods.split(", ")[1]}
    async with http.options(suite.url + path, headers=headers) as r:
        assert r.status == 204
        assert await r.read() == b""
        assert r.headers["Access-Control-Allow-Origin"] == origin
        assert r.headers["Access-Control-Allow-Credentials"] == "true"
        assert r.headers["Access-Control-Allow-Methods"] == methods
        assert r.headers["Access-Control-Max-Age"] == "31536000"
        assert r.headers["Cache-Control"] == YEAR
        assert "Origin" in r.headers["Vary"]  # a cached preflight must not serve another origin
        expires = email.utils.parsedate_to_datetime(r.headers["Expires"])
        assert 360 < (expires.timestamp() - time.time()) / 86400 < 370


async def test_session_answers_echo_the_origin_or_say_star_without_credentials(
        suite: Suite, http: aiohttp.ClientSession) -> None:
    async with http.post(suite.session() + "/xhr", headers={"Origin": "null"}) as r:
        assert await r.text() == "o\n"
        assert r.headers["Access-Control-Allow-Origin"] == "null"
        assert r.headers["Access-Control-Allow-Credentials"] == "true"
    async with http.post(suite.session() + "/xhr") as r:  # no Origin: not a cross-origin browser request
        assert r.headers["Access-Control-Allow-Origin"] == "*"
        assert "Access-Control-Allow-Credentials" not in r.headers
    async with http.get(suite.url + "/echo/info", headers={"Origin": "http://test"}) as r:
        assert r.headers["Access-Control-Allow-Origin"] == "http://test"
        assert r.headers["Access-Control-Allow-Credentials"] == "true"


@pytest.mark.parametrize(("requested", "allowed"), [("a, b, c", "a, b, c"), ("", None), (None, None)])
async def test_requested_headers_are_allowed_back(
        suite: Suite, http: aiohttp.ClientSession, requested: str | None, allowed: str | None) -> None:
    headers = {"Origin": "http://test", "Access-Control-Request-Method": "POST"}
    if requested is not None:
        headers["Access-Control-Request-Headers"] = requested
    async with http.options(suite.session() + "/xhr", headers=headers) as r:
        assert r.status == 204
        assert r.headers.get("Access-Control-Allow-Headers") == allowed


async def test_a_null_origin_follows_the_origin_policy(suite: Suite, http: aiohttp.ClientSession) -> None:
    """A node allows ``null`` only when COUP_ALLOWED_ORIGINS says so (``*`` or ``null``)."""
    null = {"Origin": "null", "Access-Control-Request-Method": "POST"}
    async with http.options(f"{suite.url}/strict/000/s/xhr", headers=null) as r:
        assert r.status == 403
        assert "Access-Control-Allow-Origin" not in r.headers
    async with http.post(f"{suite.url}/strict/000/{uuid.uuid4()}/xhr", headers=null) as r:
        assert r.status == 403
    async with http.post(f"{suite.url}/files/000/{uuid.uuid4()}/xhr", headers=null) as r:
        assert await r.text() == "o\n"
        assert r.headers["Access-Control-Allow-Origin"] == "null"


# ---------------------------------------------------------------------- close reasons


async def test_raw_websocket_close_frame_says_go_away(suite: Suite) -> None:
    ws = await websocket_connect(suite.url.replace("http", "ws") + "/close/websocket")
    assert await asyncio.wait_for(ws.read_message(), 3) is None
    assert (ws.close_code, ws.close_reason) == (3000, "Go away!")


async def test_framed_websocket_sends_the_close_frame_then_closes_with_its_code(suite: Suite) -> None:
    ws = await websocket_connect(suite.session("close").replace("http", "ws") + "/websocket")
    assert await asyncio.wait_for(ws.read_message(), 3) == "o"
    assert await asyncio.wait_for(ws.read_message(), 3) == 'c[3000,"Go away!"]'
    assert await asyncio.wait_for(ws.read_message(), 3) is None
    assert (ws.close_code, ws.close_reason) == (3000, "Go away!")


@pytest.mark.parametrize(("sockjs_code", "sent"), [
    (3000, 3000), (4400, 4400), (4999, 4999), (1000, 1000), (1001, 1001),
    (2010, 1000), (1002, 1000), (5000, 1000), (None, None),
])
async def test_only_close_codes_rfc6455_allows_reach_the_websocket(sockjs_code: int | None, sent: int | None) -> None:
    """SockJS's own codes (2010 "Another connection still open", 1002 "Connection
    interrupted") mean something else in a WebSocket close frame; clients fail on them."""
    assert websocket_close_code(sockjs_code) == sent


async def test_broken_json_on_a_websocket_ends_it_abruptly_without_a_server_error(suite: Suite) -> None:
    ws = await websocket_connect(suite.session().replace("http", "ws") + "/websocket")
    assert await asyncio.wait_for(ws.read_message(), 3) == "o"
    await ws.write_message('["a')
    assert await asyncio.wait_for(ws.read_message(), 3) is None
    assert ws.close_code is None  # no close frame: the protocol wants an abrupt end
    # (the autouse no_errors_logged fixture fails the test if this was logged as an error)


# ---------------------------------------------------------------------- the iframe page

IFRAME_PATHS = ["iframe.html", "iframe-a.html", "iframe-.html", "iframe-0.1.2.html",
                "iframe-0.1.2abc-dirty.2144.html", "iframe-a.html?t=1234"]


async def test_the_iframe_page_is_the_current_revisions_and_strongly_cacheable(
        suite: Suite, http: aiohttp.ClientSession) -> None:
    sockjs_url = "https://cdn.jsdelivr.net/sockjs/0.3/sockjs.min.js"  # the library's default
    etags = set()
    for path in IFRAME_PATHS:
        async with http.get(f"{suite.url}/echo/{path}") as r:
            assert r.status == 200, path
            assert r.headers["Content-Type"] == HTML
            assert await r.text() == IFRAME_PAGE % sockjs_url
            assert r.headers["Cache-Control"] == YEAR
            assert email.utils.parsedate_to_datetime(r.headers["Expires"]).timestamp() > time.time() + 360 * 86400
            for header in ("Last-Modified", "Set-Cookie"):
                assert header not in r.headers
            etags.add(r.headers["ETag"])
    assert len(etags) == 1 and etags != {""}
    etag = etags.pop()
    async with http.get(suite.url + "/echo/iframe.html", headers={"If-None-Match": etag}) as r:
        assert r.status == 304
        assert "Content-Type" not in r.headers
        assert await r.read() == b""
    async with http.get(suite.url + "/echo/iframe.html", headers={"If-None-Match": '"stale"'}) as r:
        assert r.status == 200


@pytest.mark.parametrize("path", ["iframe.htm", "iframe", "IFRAME.HTML", "IFRAME", "iframe.HTML", "iframe.xml",
                                  "iframe-/.html"])
async def test_malformed_iframe_urls_are_not_found(suite: Suite, http: aiohttp.ClientSession, path: str) -> None:
    async with http.get(f"{suite.url}/echo/{path}") as r:
        assert r.status == 404


async def test_the_iframe_page_escapes_the_configured_script_url(suite: Suite, http: aiohttp.ClientSession) -> None:
    async with http.get(suite.url + "/quoted/iframe.html") as r:
        assert '<script src="/x&quot;.js?a=&lt;b&gt;"></script>' in await r.text()


async def test_the_nodes_iframe_page_loads_the_vendored_client(
        sockjs_node: RunningNode, http: aiohttp.ClientSession) -> None:
    async with http.get(sockjs_node.url + "/sockjs/iframe.html") as r:
        assert await r.text() == IFRAME_PAGE % "/vendor/sockjs.min.js"
    async with http.get(sockjs_node.url + "/vendor/sockjs.min.js") as r:
        assert r.status == 200
        assert b"bootstrap_iframe" in await r.read()


# ---------------------------------------------------------------------- info


async def test_info_says_what_the_service_offers(suite: Suite, http: aiohttp.ClientSession) -> None:
    entropies = []
    for _ in range(2):
        async with http.get(suite.url + "/echo/info") as r:
            info = await r.json()
        assert (info["websocket"], info["cookie_needed"], info["origins"]) == (True, False, ["*:*"])
        assert isinstance(info["entropy"], int) and 0 <= info["entropy"] < 2**32
        entropies.append(info["entropy"])
    assert entropies[0] != entropies[1]
    async with http.get(suite.url + "/disabled_websocket_echo/info") as r:
        assert (await r.json())["websocket"] is False
    async with http.get(suite.url + "/cookie_needed_echo/info") as r:
        assert (await r.json())["cookie_needed"] is True
        assert "Set-Cookie" not in r.headers


# ---------------------------------------------------------------------- hixie-76 (test_haproxy)

HAPROXY_KEY1 = "4 @1  46546xW%0l 1 5"
HAPROXY_KEY2 = "12998 5 Y3 1  .P00"
HAPROXY_NONCE = b"aaaaaaaa"
HAPROXY_ANSWER = b"\xca4\x00\xd8\xa5\x08G\x97,\xd5qZ\xba\xbfC{"


@pytest.mark.parametrize(("key1", "key2", "nonce", "answer"), [
    (HAPROXY_KEY1, HAPROXY_KEY2, HAPROXY_NONCE, HAPROXY_ANSWER),  # sockjs-protocol's test_haproxy
    ("18x 6]8vM;54 *(5:  {   U1]8  z [  8", "1_ tx7X d  <  nw  334J702) 7]o}` 0",
     b"Tm[K T2u", b"fQJ,fN/4F4!~K~MH"),  # the example in draft-hixie-thewebsocketprotocol-76
])
async def test_hixie76_challenge_response(key1: str, key2: str, nonce: bytes, answer: bytes) -> None:
    assert hixie76.challenge_response(key1, key2, nonce) == answer


@pytest.mark.parametrize("key", ["123", "", "  ", "5  ", "1 2 3 4 5 6 7 8 9 0 1", "99999999999 "])
async def test_hixie76_keys_that_break_the_draft_are_refused(key: str) -> None:
    with pytest.raises(hixie76.HandshakeError):
        hixie76.key_number(key)


def hixie76_head(path: str, host: str, key1: str = HAPROXY_KEY1, key2: str = HAPROXY_KEY2) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: WebSocket\r\n"
            f"Origin: http://{host}\r\nSec-WebSocket-Key1: {key1}\r\nSec-WebSocket-Key2: {key2}\r\n\r\n").encode()


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers


async def test_haproxy_style_upgrade_answers_its_head_before_the_nonce(suite: Suite) -> None:
    """HAProxy (and the protocol's test_haproxy) holds the nonce back until the head is answered."""
    path = f"/echo/000/{uuid.uuid4()}/websocket"
    reader, writer = await suite.raw()
    try:
        writer.write(hixie76_head(path, suite.host))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)  # no nonce sent yet
        status, headers = parse_head(head)
        assert status == 101
        assert (headers["upgrade"].lower(), headers["connection"].lower()) == ("websocket", "upgrade")
        assert headers["sec-websocket-location"] == f"ws://{suite.host}{path}"
        assert headers["sec-websocket-origin"] == f"http://{suite.host}"
        assert "content-length" not in headers
        writer.write(HAPROXY_NONCE)
        assert await asyncio.wait_for(reader.readexactly(16), 3) == HAPROXY_ANSWER
        assert await asyncio.wait_for(reader.readexactly(3), 3) == b"\x00o\xff"
        for byte in b'\x00["a","b"]\xff':  # one byte at a time
            writer.write(bytes([byte]))
            await writer.drain()
        assert await asyncio.wait_for(reader.readuntil(b"\xff"), 3) == b'\x00a["a","b"]\xff'
        writer.write(b"\xff\x00")  # the client closes; the server answers in kind and hangs up
        assert await asyncio.wait_for(reader.read(), 3) == b"\xff\x00"
    finally:
        writer.close()


async def test_hixie76_close_service_sends_go_away_then_closes(suite: Suite) -> None:
    reader, writer = await suite.raw()
    try:
        writer.write(hixie76_head(f"/close/000/{uuid.uuid4()}/websocket", suite.host) + HAPROXY_NONCE)
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
        assert await asyncio.wait_for(reader.readexactly(16), 3) == HAPROXY_ANSWER
        rest = await asyncio.wait_for(reader.read(), 3)
        assert rest == b'\x00o\xff\x00c[3000,"Go away!"]\xff\xff\x00'
    finally:
        writer.close()


async def test_hixie76_is_refused_where_it_is_off(suite: Suite) -> None:
    """The node's default: hixie-76 frames are unmasked, and no browser in use speaks it."""
    reader, writer = await suite.raw()
    try:
        writer.write(hixie76_head(f"/strict/000/{uuid.uuid4()}/websocket", suite.host).replace(
            f"Origin: http://{suite.host}\r\n".encode(), b""))
        status, _ = parse_head(await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3))
        assert status == 426
    finally:
        writer.close()


async def test_hixie76_with_a_broken_key_gets_400(suite: Suite) -> None:
    reader, writer = await suite.raw()
    try:
        writer.write(hixie76_head(f"/echo/000/{uuid.uuid4()}/websocket", suite.host, key1="123456"))
        status, _ = parse_head(await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3))
        assert status == 400
    finally:
        writer.close()


async def test_hixie76_frame_past_the_size_limit_ends_the_connection(suite: Suite) -> None:
    reader, writer = await suite.raw()
    try:
        writer.write(hixie76_head(f"/small/000/{uuid.uuid4()}/websocket", suite.host) + HAPROXY_NONCE)
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
        assert await asyncio.wait_for(reader.readexactly(19), 3) == HAPROXY_ANSWER + b"\x00o\xff"
        writer.write(b"\x00" + json.dumps(["x" * 100]).encode())  # no end marker: still "reading"
        assert await asyncio.wait_for(reader.read(), 3) == b""  # closed, not buffering on
    finally:
        writer.close()


async def test_hixie76_client_that_never_sends_its_nonce_is_dropped(
        suite: Suite, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hixie76, "NONCE_TIMEOUT", 0.2)
    reader, writer = await suite.raw()
    try:
        writer.write(hixie76_head(f"/echo/000/{uuid.uuid4()}/websocket", suite.host))
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
        assert await asyncio.wait_for(reader.read(), 3) == b""
    finally:
        writer.close()


async def test_hixie76_protocol_has_no_binary_messages() -> None:
    protocol = hixie76.Hixie76Protocol.__new__(hixie76.Hixie76Protocol)
    with pytest.raises(ValueError, match="text only"):
        protocol.write_message(b"\x00", binary=True)
