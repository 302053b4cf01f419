"""The little HTTP/1.1 the front door speaks itself: a parsed request head and whole answers.

Only what its fast paths need (`coup.transports.front_door`): a head it cannot parse under
these strict rules is not an error here, it goes to Tornado (`NotFast`), whose answer is the
one the client gets.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterable
from http import HTTPStatus

from tornado.escape import parse_qs_bytes

from coup.engine.handshake import HandshakeInfo
from coup.transports.proxies import TrustedProxies


class NotFast(Exception):
    """This request is not for a fast path: hand it to Tornado."""


class FrontRequest:
    """One request head, parsed strictly: HTTP/1.1, no folded, repeated or malformed header."""

    __slots__ = ("headers", "method", "path", "peer", "query", "started", "target")

    def __init__(self, head: bytes, peer: str, started: float) -> None:
        text = head.decode("latin-1")
        request_line, _, header_block = text.partition("\r\n")
        parts = request_line.split(" ")
        if len(parts) != 3 or parts[2] != "HTTP/1.1":
            raise NotFast()
        self.method, self.target = parts[0], parts[1]
        headers: dict[str, str] = {}
        if header_block:
            for line in header_block.split("\r\n"):
                name, colon, value = line.partition(":")
                lower = name.lower()
                if not colon or not name or name[0] in " \t" or name != name.strip() or lower in headers:
                    raise NotFast()  # folded, malformed or repeated header: Tornado's rules apply
                headers[lower] = value.strip()
        #: header names in lower case
        self.headers = headers
        path, _, query_text = self.target.partition("?")
        self.path = path
        #: the last value of each argument, as Tornado's handlers read them
        self.query = parse_query(query_text)
        #: `time.monotonic()` when the head was read (the access log's duration)
        self.started = started
        #: the address the connection came from (a proxy's, maybe: `client`)
        self.peer = peer

    def client(self, proxies: TrustedProxies) -> tuple[str, bool]:
        """The client's IP and whether it came over TLS, believing forwarded headers only from
        trusted proxies (the same rule as Tornado's side, `ArrivalHTTPServer`)."""
        ip, scheme = proxies.client(self.peer, self.header)
        return ip, scheme == "https"

    def handshake_info(self, proxies: TrustedProxies) -> HandshakeInfo:
        address, secure = self.client(proxies)
        return HandshakeInfo(headers=self.headers, query=self.query, address=address, url=self.target,
                             secure=secure, issued=time.time(), xdomain="origin" in self.headers)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def body_length(self) -> int:
        """The Content-Length (0 without one); a body we do not frame ourselves raises `NotFast`."""
        headers = self.headers
        if "transfer-encoding" in headers or "expect" in headers:
            raise NotFast()
        length = headers.get("content-length")
        if length is None:
            return 0
        if not length.isdigit() or len(length) > 9:
            raise NotFast()
        return int(length)

    def keeps_alive(self) -> bool:
        return self.headers.get("connection", "").lower() != "close"


def parse_query(text: str) -> dict[str, str]:
    """A query string as `EngineRequestHandler.query` reads it (Tornado's `parse_qs_bytes`, the
    last value of each name); split by hand when nothing in it is escaped (every poll's)."""
    if text.isascii() and "%" not in text and "+" not in text:
        query: dict[str, str] = {}
        for field in text.split("&"):
            if field:
                name, _, value = field.partition("=")
                query[name] = value
        return query
    arguments = parse_qs_bytes(text, keep_blank_values=True)
    return {k: v[-1].decode("utf-8", "replace") for k, v in arguments.items()}


_date = (0, b"")


def http_date() -> bytes:
    """The Date header's value, formatted once a second."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, email.utils.formatdate(now, usegmt=True).encode())
    return _date[1]


#: the last header of every answer (`SecurityHeaders`), before the framing Tornado adds itself
NOSNIFF = b"X-Content-Type-Options: nosniff\r\n"


def response_head(status: int, content_type: str, headers: Iterable[tuple[str, str]]) -> list[bytes]:
    """The status line and headers of an answer as Tornado's `RequestHandler` writes them in our
    application (the same headers in the same order, no Server), up to its framing (`response`,
    `chunked_head`, `empty_head`)."""
    lines = [b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nDate: %s\r\n"
             % (status, HTTPStatus(status).phrase.encode(), content_type.encode(), http_date())]
    lines.extend(b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1")) for name, value in headers)
    return lines


def response(status: int, content_type: str, headers: Iterable[tuple[str, str]], body: bytes) -> bytes:
    """A whole answer with a body (`SecurityHeaders` applied: nosniff after the length)."""
    lines = response_head(status, content_type, headers)
    lines.append(b"Content-Length: %d\r\n%s\r\n" % (len(body), NOSNIFF))
    lines.append(body)
    return b"".join(lines)


def empty_head(status: int, content_type: str, headers: Iterable[tuple[str, str]]) -> bytes:
    """A whole answer without a body or a length (a 204: Tornado writes no Content-Length)."""
    return b"".join(response_head(status, content_type, headers)) + NOSNIFF + b"\r\n"


def chunked_head(status: int, content_type: str, headers: Iterable[tuple[str, str]]) -> bytes:
    """The head of an answer whose body follows in chunks (`chunk`), as Tornado frames a flushed one."""
    return b"".join(response_head(status, content_type, headers)) + NOSNIFF + b"Transfer-Encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


#: the end of a chunked body
LAST_CHUNK = b"0\r\n\r\n"
