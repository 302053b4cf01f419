"""Every kind of malformed input we know of, against one `coup serve` process (maxPayload
10,000 bytes, as the in-process engine tests use): each offender gets its documented answer
(a close code, an HTTP status, an `error` envelope), and after each case the node is up,
bounded, traceback-free, and Alice's messages still reach Bob."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.adversarial import attacks
from tests.adversarial.conftest import Arena
from tests.adversarial.target import HonestPair, Target
from tests.engine.test_malformed_input import MAX_PAYLOAD, POLLING_CASES, WEBSOCKET_CASES
from tests.wsclient import OP_CLOSE, RawWebSocket, text

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    workdir: Path = tmp_path_factory.mktemp("malformed")
    # the honest pair joins and posts once per case: per-user rate limits are another test's subject
    running = Target(workdir, {"COUP_MAX_PAYLOAD": str(MAX_PAYLOAD), "COUP_JOIN_RATE": "1000",
                               "COUP_JOIN_BURST": "1000", "COUP_MESSAGE_RATE": "1000",
                               "COUP_MESSAGE_BURST": "1000"}).start()
    try:
        yield running
    finally:
        running.stop()


@pytest_asyncio.fixture
async def arena(target: Target) -> AsyncIterator[Arena]:
    honest = await HonestPair(target).connect()
    try:
        yield Arena(target, honest)
    finally:
        await honest.close()


async def closed_with(ws: RawWebSocket, timeout: float = 10.0) -> int | None:
    """The close code the server sent (None: it ended the connection without a close frame)."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                frame = await ws.recv(timeout)
                if frame.opcode == OP_CLOSE:
                    return frame.close_code
    except asyncio.IncompleteReadError:
        return None


#: the engine tests' cases; the attachment limit there is 3, here the default 10
CASES = [(c, d, k) for c, d, k in WEBSOCKET_CASES if c != "attachment count over the limit"] + [
    ("attachment count over the limit", text('4511-["echo"]'), None)]


@pytest.mark.parametrize(("case", "data", "code"), CASES, ids=[c[0] for c in CASES])
async def test_websocket_input(arena: Arena, case: str, data: bytes, code: int | None) -> None:
    ws, _ = await attacks.sio_socket(arena.attacker, attacks.signed_in(arena.attacker, 5))
    try:
        ws.send(data)
        got = await closed_with(ws)
        # a frame-level violation closes with its code; a bad Engine.IO / Socket.IO packet
        # ends the session, whose WebSocket then closes normally
        assert got == (code if code is not None else 1000), case
    finally:
        await ws.close()
    await arena.survived(max_growth_mb=40)


@pytest.mark.parametrize(("case", "body"), POLLING_CASES, ids=[c[0] for c in POLLING_CASES])
async def test_polling_body(arena: Arena, case: str, body: bytes) -> None:
    sid = await attacks.polling_sid(arena.attacker)
    path = f"{attacks.POLLING}&sid={sid}"
    status, _, _ = await attacks.raw_http(arena.attacker, attacks.http_request(
        "POST", path, b"40" + json.dumps({"userId": 5, "token": arena.target.token(5)}).encode()))
    assert status == 200
    status, _, _ = await attacks.raw_http(arena.attacker, attacks.http_request("POST", path, body))
    assert status in (200, 400), case
    status, _, answer = await attacks.raw_http(arena.attacker, attacks.http_request("GET", path))
    assert status == 400 and json.loads(answer) == {"code": 1, "message": "Session ID unknown"}
    await arena.survived(max_growth_mb=40)


HTTP_CASES: list[tuple[str, bytes, tuple[int, ...]]] = [
    ("Content-Length and chunked together", b"POST /api/dev/token HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", (400,)),
    ("two Content-Lengths", b"POST /api/dev/token HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
     b"Content-Length: 2\r\n\r\nab", (400,)),
    ("bad chunk size", b"POST /api/dev/token HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", (400,)),
    # Tornado drops a connection whose head outgrows its buffer, without an answer (0)
    ("header block over 64 KB", b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", (0, 400, 431)),
    ("unknown method", b"BREW /healthz HTTP/1.1\r\nHost: x\r\n\r\n", (405,)),
    ("request line garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", (400,)),
    ("absolute path escape", b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", (403, 404, 400)),
    ("encoded path escape", b"GET /%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", (403, 404, 400)),
    ("NUL in a static path", b"GET /js/%00.js HTTP/1.1\r\nHost: x\r\n\r\n", (400,)),
    ("API body not JSON", b"POST /api/dev/token HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n{nope", (400,)),
    ("API body NaN", b"POST /api/dev/token HTTP/1.1\r\nHost: x\r\nContent-Length: 14\r\n\r\n{\"userId\":NaN}", (400,)),
    ("API body not UTF-8", b"POST /api/dev/token HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n\"\xff\xfe\"", (400,)),
    ("API body too deep", attacks.http_request("POST", "/api/dev/token", attacks.nested(5_000)), (400,)),
    ("API body over 64 KB", attacks.http_request("POST", "/api/dev/token", b'"' + b"a" * 70_000 + b'"'), (413,)),
    ("API wrong types", attacks.http_request("POST", "/api/dev/token", b'{"userId":"1e9999"}'), (400,)),
    ("bearer garbage", attacks.http_request("GET", "/api/me", headers={"Authorization": "Bearer \x7f\x7f"}),
     (400, 401)),
    ("alg none token", attacks.http_request("GET", "/api/me", headers={
        "Authorization": "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIiwiZXhwIjo5OTk5OTk5OTk5fQ."}), (401,)),
]


@pytest.mark.parametrize(("case", "request_bytes", "statuses"), HTTP_CASES, ids=[c[0] for c in HTTP_CASES])
async def test_http_request(arena: Arena, case: str, request_bytes: bytes, statuses: tuple[int, ...]) -> None:
    try:
        status, _, _ = await attacks.raw_http(arena.attacker, request_bytes)
    except (asyncio.IncompleteReadError, ConnectionError):
        status = 0  # the connection was dropped without an answer
    assert status in statuses, (case, status)
    await arena.survived(max_growth_mb=40)


SOCKJS_CASES: list[tuple[str, str, str]] = [
    ("not JSON", '["{nope"]', "BAD_MESSAGE"),
    ("not an object", '["[1,2]"]', "BAD_MESSAGE"),
    ("event before auth", '["{\\"type\\":\\"event\\",\\"event\\":\\"message\\",\\"args\\":[]}"]', "AUTH_REQUIRED"),
    ("unknown type", '["{\\"type\\":\\"boom\\"}"]', "BAD_MESSAGE"),
    ("reserved event", '["{\\"type\\":\\"auth\\",\\"auth\\":{}}","{\\"type\\":\\"event\\",\\"event\\":\\"connect\\"}"]',
     "BAD_MESSAGE"),
    ("over the size limit", '["' + "a" * (MAX_PAYLOAD + 10) + '"]', "1009"),  # the WebSocket's own limit
]


@pytest.mark.parametrize(("case", "frame", "code"), SOCKJS_CASES, ids=[c[0] for c in SOCKJS_CASES])
async def test_sockjs_envelope(arena: Arena, case: str, frame: str, code: str) -> None:
    ws = await RawWebSocket.connect(arena.target.port, "/sockjs/000/adversary/websocket")
    try:
        assert (await ws.recv_text(5)) == "o"
        ws.send_text(frame)
        async with asyncio.timeout(10):
            while True:
                frame = await ws.recv(10)
                if frame.opcode == OP_CLOSE:
                    assert str(frame.close_code) == code, (case, frame.close_code)
                    break
                message = frame.text
                if message.startswith("a"):
                    envelopes = [json.loads(item) for item in json.loads(message[1:])]
                    errors = [e for e in envelopes if e.get("type") == "error"]
                    if errors:
                        assert errors[0]["code"] == code, (case, errors)
                        break
    finally:
        await ws.close()
    await arena.survived(max_growth_mb=40)
