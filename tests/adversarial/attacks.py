"""The attacks of the adversarial corpus, as plain coroutines against a host and port.

Each returns what the attacker saw, for the tests to check against the documented answer;
`bench/soak.py` runs the same ones in a loop next to honest clients. Raw sockets only: an
attacker does not use a well-behaved client.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from tests.wsclient import OP_BINARY, OP_CLOSE, OP_CONT, OP_TEXT, RawWebSocket, client_frame, text

WS = "/socket.io/?EIO=4&transport=websocket"
POLLING = "/socket.io/?EIO=4&transport=polling"


@dataclass
class Attacker:
    """Where to attack, and how to sign in as a user."""

    port: int
    token: Callable[[int], str]
    host: str = "127.0.0.1"


class Refused(Exception):
    """The server refused the Socket.IO connection (CONNECT_ERROR); `data` is its payload."""

    def __init__(self, data: Any) -> None:
        super().__init__(f"connect_error {data!r}")
        self.data = data


async def sio_socket(a: Attacker, auth: dict[str, Any], *, local_addr: str | None = None,
                     headers: dict[str, str] | None = None,
                     marks: dict[str, float] | None = None) -> tuple[RawWebSocket, dict[str, Any]]:
    """A raw WebSocket with the main namespace connected; returns it with the CONNECT reply.

    `marks` (a benchmark's phase timings) gets the loop time of "tcp", "upgraded" and "opened"."""
    ws = await raw_ws(a, local_addr, headers, marks)
    opened = await ws.recv_text(5)
    if marks is not None:
        marks["opened"] = asyncio.get_running_loop().time()
    assert opened.startswith("0"), opened
    ws.send_text("40" + json.dumps(auth))
    while True:
        reply = await ws.recv_text(10)
        if reply.startswith("40"):
            return ws, json.loads(reply[2:])
        if reply.startswith("44"):
            await ws.close()
            raise Refused(json.loads(reply[2:]))


async def raw_ws(a: Attacker, local_addr: str | None = None, headers: dict[str, str] | None = None,
                 marks: dict[str, float] | None = None) -> RawWebSocket:
    """A WebSocket upgraded at the Engine.IO path, from `local_addr` (any 127.x.y.z), with extra `headers`.

    `marks`: loop times of "tcp" (connected) and "upgraded" (the 101 read), for benchmarks."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if local_addr is not None:
        sock.bind((local_addr, 0))
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (a.host, a.port))
    if marks is not None:
        marks["tcp"] = loop.time()
    reader, writer = await asyncio.open_connection(sock=sock, limit=2**22)
    key = base64.b64encode(os.urandom(16)).decode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    writer.write((f"GET {WS} HTTP/1.1\r\nHost: 127.0.0.1:{a.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n").encode())
    head = await reader.readuntil(b"\r\n\r\n")
    if marks is not None:
        marks["upgraded"] = loop.time()
    assert head.startswith(b"HTTP/1.1 101"), head
    return RawWebSocket(reader, writer)


def signed_in(a: Attacker, user_id: int, **extra: Any) -> dict[str, Any]:
    return {"userId": user_id, "token": a.token(user_id), **extra}


async def events_until(ws: RawWebSocket, count: int, event: str, timeout: float = 30.0) -> list[Any]:
    """Read until `count` events named `event` arrived; return their arguments."""
    got: list[Any] = []
    async with asyncio.timeout(timeout):
        while len(got) < count:
            message = await ws.recv_text(timeout)
            if message.startswith("42"):
                data = json.loads(message[2:])
                if data[0] == event:
                    got.append(data[1:])
    return got


# ---------------------------------------------------------------------- VULN 1: recovery store


async def error_reply_flood(a: Attacker, user_id: int = 5, count: int = 200, name_size: int = 500_000) -> list[Any]:
    """Unknown events with huge names: every one is answered with an `error` event."""
    ws, _ = await sio_socket(a, signed_in(a, user_id))
    try:
        name = "E" * name_size
        replies: list[Any] = []
        for start in range(0, count, 10):
            for _ in range(min(10, count - start)):
                ws.send_text("42" + json.dumps([name]))
            replies += await events_until(ws, min(10, count - start), "error")
        return replies
    finally:
        await ws.close()


async def small_error_flood(a: Attacker, user_id: int = 5, count: int = 55_000, batch: int = 200) -> int:
    """Many small refused events, paced so the per-socket flood limit never trips."""
    ws, _ = await sio_socket(a, signed_in(a, user_id))
    try:
        done = 0
        while done < count:
            n = min(batch, count - done)
            ws.send(b"".join(text('42["x"]') for _ in range(n)))
            await events_until(ws, n, "error")
            done += n
        return done
    finally:
        await ws.close()


# ---------------------------------------------------------------------- VULN 2 and 3: HTTP bodies


async def polling_sid(a: Attacker) -> str:
    reader, writer = await asyncio.open_connection(a.host, a.port)
    writer.write(f"GET {POLLING} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    body = await reader.readexactly(length)
    writer.close()
    return str(json.loads(body[1:])["sid"])


async def aborted_posts(a: Attacker, count: int = 200, sent: int = 900_000) -> None:
    """Polling POSTs announcing 1,000,000 bytes, cut off after `sent`."""
    sid = await polling_sid(a)
    for _ in range(count):
        _, writer = await asyncio.open_connection(a.host, a.port)
        writer.write(f"POST {POLLING}&sid={sid} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
                     f"Content-Length: 1000000\r\n\r\n".encode() + b"4" + b"x" * (sent - 1))
        await writer.drain()
        writer.transport.abort()


SLOW_BODY_PATHS = ("/socket.io/?EIO=4&transport=polling&sid={sid}", "/api/dev/token", "/sockjs/000/slowbody/xhr_send")


async def slow_bodies(a: Attacker, per_path: int = 50) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """Heads with Content-Length 1000 and ten body bytes, then silence, on several routes."""
    sid = await polling_sid(a)
    held = []
    for path in SLOW_BODY_PATHS:
        for _ in range(per_path):
            reader, writer = await asyncio.open_connection(a.host, a.port)
            writer.write(f"POST {path.format(sid=sid)} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         f"Content-Length: 1000\r\n\r\n".encode() + b'{"userId":1')
            held.append((reader, writer))
    return held


async def closed_by_server(reader: asyncio.StreamReader, timeout: float) -> bool:
    """True when the server ended the connection (EOF or reset) within `timeout` seconds."""
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(65536):
                pass
        return True
    except TimeoutError:  # before OSError: TimeoutError is one
        return False
    except (ConnectionError, OSError):
        return True


# ---------------------------------------------------------------------- VULN 4 and WebSocket closes


async def read_close_code(ws: RawWebSocket, timeout: float = 10.0) -> int | None:
    """Read frames until the server's close frame; None when the connection ended without one."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                frame = await ws.recv(timeout)
                if frame.opcode == OP_CLOSE:
                    return frame.close_code
    except (asyncio.IncompleteReadError, ConnectionError, OSError, TimeoutError):
        return None


async def fragment_flood(a: Attacker, frames: int = 4_000_000) -> int | None:
    """A 2-byte message padded with empty continuation frames; returns the close code received."""
    ws, _ = await sio_socket(a, signed_in(a, 5))
    empty = client_frame(OP_CONT, b"", fin=False)
    chunk = empty * 10_000

    async def flood() -> None:
        try:
            ws.send(client_frame(OP_TEXT, b"42", fin=False))
            for _ in range(frames // 10_000):
                ws.send(chunk)
                await ws.writer.drain()
        except (ConnectionError, OSError):
            pass

    sender = asyncio.create_task(flood())
    try:
        return await read_close_code(ws, 30)
    finally:
        sender.cancel()
        await ws.close()


async def oversized_message(a: Attacker, announced: int = 2_000_000, sent: int = 1_000_000) -> int | None:
    """A binary frame announcing more than maxPayload, its payload still streaming in."""
    ws, _ = await sio_socket(a, signed_in(a, 5))
    header = bytes((0x80 | OP_BINARY, 0x80 | 127)) + struct.pack("!Q", announced) + os.urandom(4)

    async def stream() -> None:
        try:
            ws.send(header)
            for _ in range(sent // 65536):
                ws.send(b"\0" * 65536)
                await ws.writer.drain()
        except (ConnectionError, OSError):
            pass

    sender = asyncio.create_task(stream())
    try:
        return await read_close_code(ws, 15)
    finally:
        sender.cancel()
        await ws.close()


async def valid_then_bad_frame(a: Attacker) -> tuple[list[str], int | None]:
    """One write: an Engine.IO ping and an event, then a frame with a reserved bit. Returns the
    text messages answered before the close, and the close code."""
    ws = await raw_ws(a)
    opened = await ws.recv_text(5)
    assert opened.startswith("0")
    ws.send(text("2") + text("2") + client_frame(OP_TEXT, b"2", rsv=4))
    answers: list[str] = []
    try:
        async with asyncio.timeout(10):
            while True:
                frame = await ws.recv(10)
                if frame.opcode == OP_CLOSE:
                    return answers, frame.close_code
                answers.append(frame.text)
    except (asyncio.IncompleteReadError, ConnectionError, OSError, TimeoutError):
        return answers, None
    finally:
        await ws.close()


# ---------------------------------------------------------------------- HTTP


async def raw_http(a: Attacker, request: bytes, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """One request on its own connection: (status, headers lower-cased, body)."""
    reader, writer = await asyncio.open_connection(a.host, a.port)
    try:
        writer.write(request)
        async with asyncio.timeout(timeout):
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ")[1])
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0") or 0)
            body = await reader.readexactly(length) if length else b""
        return status, headers, body
    finally:
        writer.close()


def http_request(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method in ("POST", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# ---------------------------------------------------------------------- sockets and rooms


async def join_leave_cycles(a: Attacker, user_id: int = 3, cycles: int = 300) -> dict[str, int]:
    """Leave and join study 1 as fast as acks come back; counts of ok and refused calls by code."""
    ws, _ = await sio_socket(a, signed_in(a, user_id))
    counts: dict[str, int] = {}
    ack = 0
    try:
        for i in range(cycles * 2):
            event = "join-study" if i % 2 == 0 else "leave-study"
            ack += 1
            ws.send_text(f"42{ack}" + json.dumps([event, {"studyId": 1}]))
            async with asyncio.timeout(10):
                while True:
                    message = await ws.recv_text(10)
                    if message.startswith(f"43{ack}["):
                        result = json.loads(message[len(f"43{ack}"):])[0]
                        key = "ok" if result.get("ok") else result["error"]["code"]
                        counts[key] = counts.get(key, 0) + 1
                        break
        return counts
    finally:
        await ws.close()


async def many_sockets(a: Attacker, count: int, auth: Callable[[int], dict[str, Any]],
                       local_addr: str | None = None) -> tuple[list[RawWebSocket], list[Any]]:
    """Open `count` connections; returns the open ones and the CONNECT_ERROR payloads of the refused."""
    opened: list[RawWebSocket] = []
    refused: list[Any] = []
    for i in range(count):
        try:
            ws, _ = await sio_socket(a, auth(i), local_addr=local_addr)
            opened.append(ws)
        except Refused as exc:
            refused.append(exc.data)
    return opened, refused


async def close_all(sockets: list[RawWebSocket]) -> None:
    await asyncio.gather(*(ws.close() for ws in sockets))


# ---------------------------------------------------------------------- the corpus, for the soak


Attack = Callable[[Attacker], Awaitable[Any]]


async def _nested_json(a: Attacker) -> int:
    return (await raw_http(a, http_request("POST", "/api/dev/token", nested(100_000),
                                           {"Content-Type": "application/json"})))[0]


async def _nul_static(a: Attacker) -> int:
    return (await raw_http(a, http_request("GET", "/js/%00.js")))[0]


async def _spoofed(a: Attacker) -> int:
    return (await raw_http(a, http_request("GET", POLLING, headers={"X-Real-Ip": "6.6.6.6"})))[0]


async def _slow_bodies_closed(a: Attacker) -> int:
    held = await slow_bodies(a, per_path=5)
    try:
        return sum([await closed_by_server(r, 60) for r, _ in held])
    finally:
        for _, writer in held:
            writer.close()


#: one round of every attack, small enough to loop next to honest traffic (bench/soak.py)
CORPUS: list[tuple[str, Attack]] = [
    ("error reply flood", lambda a: error_reply_flood(a, count=20, name_size=200_000)),
    ("small error flood", lambda a: small_error_flood(a, count=2_000)),
    ("aborted polling POSTs", lambda a: aborted_posts(a, count=20)),
    ("slow bodies", _slow_bodies_closed),
    ("fragment flood", lambda a: fragment_flood(a, frames=200_000)),
    ("oversized message", oversized_message),
    ("valid then bad frame", valid_then_bad_frame),
    ("nested JSON", _nested_json),
    ("NUL in a static path", _nul_static),
    ("spoofed X-Real-Ip", _spoofed),
    ("join/leave cycles", lambda a: join_leave_cycles(a, cycles=30)),
]

