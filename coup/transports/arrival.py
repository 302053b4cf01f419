"""The order in which the server read requests off their sockets.

Tornado does not hand requests to their handlers in the order it read them: a request
whose bytes come in on a readable event reaches its handler one loop turn later (the
header read is wrapped in a timeout, which resolves through a chained future) than one
whose bytes were already there when its connection was first read, and the front door
hands a connection over with its first request already read. Two SockJS polls for one
session, sent one right after the other on two connections, could so attach in the
wrong order. Streams built here number every read with a process-wide counter, so a
handler can tell which of two requests the server had first.
"""

from __future__ import annotations

import itertools
import socket
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.httputil import HTTPConnection, HTTPMessageDelegate, HTTPServerRequest
from tornado.iostream import IOStream

from coup.transports.proxies import ForwardedAdapter, TrustedProxies

_reads = itertools.count(1)


class ArrivalIOStream(IOStream):
    """An `IOStream` that remembers when (in the order of all reads) it last read bytes,
    with Nagle's algorithm off for good."""

    #: the counter's value at the last read that returned bytes; 0: nothing read yet
    arrival = 0

    def __init__(self, socket: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(socket, *args, **kwargs)
        IOStream.set_nodelay(self, True)

    def set_nodelay(self, value: bool) -> None:
        """Nagle stays off for the connection's life, as in Node's HTTP server (``noDelay: true``).

        Tornado turns it off at the end of each response and on again after it: two
        ``setsockopt`` calls per request (a long-poll is one request per delivery), and
        streamed answers (SockJS xhr-streaming) written with Nagle on, each frame after the
        first held until the client acknowledged the one before.
        """

    def read_from_fd(self, buf: bytearray | memoryview) -> int | None:
        count = super().read_from_fd(buf)
        if count:
            self.arrival = next(_reads)
        return count

    def mark_arrival(self) -> None:
        """Bytes handed over with the stream (the front door's) were read just now."""
        self.arrival = next(_reads)


class ArrivalHTTPServer(HTTPServer):
    """Tornado's `HTTPServer` with `ArrivalIOStream` connections, and forwarded headers
    believed only from `proxies` (set it; Tornado's own ``xheaders`` believes anyone)."""

    proxies = TrustedProxies()

    def start_request(self, server_conn: object, request_conn: HTTPConnection) -> HTTPMessageDelegate:
        delegate = super().start_request(server_conn, request_conn)
        if self.proxies:
            delegate = ForwardedAdapter(delegate, request_conn, self.proxies)
        return delegate

    def handle_stream(self, stream: IOStream, address: tuple[Any, ...]) -> None:
        if type(stream) is IOStream:  # Tornado's own accept path: nothing read from it yet
            stream = ArrivalIOStream(stream.socket, max_buffer_size=stream.max_buffer_size,
                                     read_chunk_size=stream.read_chunk_size,
                                     max_write_buffer_size=stream.max_write_buffer_size)
        super().handle_stream(stream, address)


def arrival_of(request: HTTPServerRequest) -> int | None:
    """When the server last read from `request`'s connection; None: not known."""
    stream = getattr(request.connection, "stream", None)
    arrival = getattr(stream, "arrival", 0)
    return arrival if isinstance(arrival, int) and arrival > 0 else None


def hung_up(request: HTTPServerRequest) -> bool:
    """Did the client close `request`'s connection before its handler began to wait?

    Tornado tells a handler that its client left (`on_connection_close`) only when the
    connection closes while the handler waits. When the request and the close come in
    together (a proxy passing on a browser tab that closed as it polled), the stream is
    closed by the time the handler runs and nothing is said: a long-poll would wait, and
    hold its session, until its next heartbeat found the connection gone.
    """
    connection = request.connection
    if not hasattr(connection, "stream"):  # not a socket of ours: a request relayed by another node
        return getattr(connection, "closed", False) is True
    stream = getattr(connection, "stream", None)  # Tornado's HTTP1Connection: None once closed
    return stream is None or bool(stream.closed())


def peer_gone(request: Any) -> bool:
    """Has the client of a request Tornado serves closed or reset its connection, whether or
    not the loop said so? One non-blocking peek at the socket (False for anything else: a
    request relayed by another node, the front door's own answers)."""
    sock = getattr(getattr(getattr(request, "connection", None), "stream", None), "socket", None)
    if not isinstance(sock, socket.socket):
        return False
    try:
        data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False  # open, with nothing to read
    except OSError:
        return True  # reset, or no longer connected
    return data == b""  # the peer's FIN (bytes waiting mean it is still there)
