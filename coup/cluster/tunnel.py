"""HTTP exchanges carried through Redis to the node that holds the session.

On a PaaS the router spreads requests round-robin and the nodes cannot open a connection
to each other: Redis is all they share. A request for a session that lives on another
node (its home) is published to the home's inbox; the home runs it through its own
Tornado `Application` on a `TunnelConnection` (Tornado's `HTTPConnection` interface, in
memory), so the ordinary polling and SockJS handlers serve it unchanged, and every piece
of the answer (status and headers, each chunk of a stream, the end) goes back to the
receiving node's inbox as one message with its order number. The receiving node writes
them to its client.

Bounds: the home says "taken" at once; a request that reaches nobody (PUBLISH answers 0),
or is not taken within `take_timeout`, or whose home leaves the cluster while it waits, is
answered at once with the error the client's library understands (Engine.IO: 400
``Session ID unknown``, so socket.io-client reconnects; SockJS: 404, so sockjs-client
closes). Each node serves at most `max_requests` relayed requests and has at most as many
of its own in flight; a response may not outgrow `max_response_bytes` unsent to its client.

Messages are ``H`` + a JSON header + ``\\n`` + the raw body bytes (no base64).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from tornado.concurrent import Future as TornadoFuture
from tornado.httputil import (
    HTTPConnection,
    HTTPHeaders,
    HTTPInputError,
    HTTPServerRequest,
    RequestStartLine,
    ResponseStartLine,
)
from tornado.iostream import StreamClosedError

from coup.cluster.resp import RedisUnavailable
from coup.protocol import jsonutil

if TYPE_CHECKING:
    from tornado.web import Application

    from coup.cluster.alarms import Alarms
    from coup.cluster.bus import Bus
    from coup.transports.origins import OriginPolicy

log = logging.getLogger(__name__)

TUNNEL = b"H"

#: hop-by-hop headers: they describe one connection, not the request (RFC 9110 7.6.1)
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                         "upgrade"})


def encode(header: dict[str, Any], body: bytes = b"") -> bytes:
    return b"".join((TUNNEL, jsonutil.dumps(header).encode(), b"\n", body))


def decode(data: bytes) -> tuple[dict[str, Any], bytes]:
    raw, _, body = data[1:].partition(b"\n")
    header = jsonutil.loads(raw.decode())
    if not isinstance(header, dict):
        raise ValueError("tunnel header is not an object")
    return header, body


def _set_close_callback(connection: HTTPConnection, callback: Callable[[], None] | None) -> None:
    """`HTTP1Connection.set_close_callback` (not part of the abstract `HTTPConnection`)."""
    cast(Any, connection).set_close_callback(callback)


def _done_future() -> TornadoFuture[None]:
    future: TornadoFuture[None] = TornadoFuture()
    future.set_result(None)
    return future


# ---------------------------------------------------------------------- the home node's side


@dataclass(slots=True)
class _TunnelContext:
    """What `HTTPServerRequest` reads from a connection's context: the client as the receiving node saw it."""

    remote_ip: str
    protocol: str
    address: tuple[str, int] = ("", 0)
    trusted_downstream: set[str] = field(default_factory=set)

    def __str__(self) -> str:
        return self.remote_ip


class TunnelConnection(HTTPConnection):
    """One relayed request's connection on its home node: what the handler writes goes back through Redis."""

    def __init__(self, tunnel: Tunnel, origin: str, rid: str, remote_ip: str, protocol: str) -> None:
        self.tunnel = tunnel
        self.origin = origin
        self.rid = rid
        self.context = _TunnelContext(remote_ip, protocol)
        self._seq = itertools.count(1)
        self._close_callback: Callable[[], None] | None = None
        self._sent = 0
        self.finished = False
        self.closed = False

    def _send(self, header: dict[str, Any], body: bytes = b"") -> None:
        """Publish one piece of the answer; dropped once the client is gone (as a closed socket drops it)."""
        if self.closed:
            return
        self._sent += len(body)
        if self._sent > self.tunnel.max_response_bytes:
            self.tunnel.alarms.raise_("relay_response_too_large",
                                      f"a relayed response outgrew {self.tunnel.max_response_bytes} bytes; cut off")
            self.tunnel.reply(self.origin, {"k": "fail", "id": self.rid, "n": next(self._seq),
                                            "reason": "relay_response_too_large", "detail": "response too large"})
            self.close()
            return
        header["id"] = self.rid
        header["n"] = next(self._seq)
        self.tunnel.reply(self.origin, header, body)

    def write_headers(self, start_line: RequestStartLine | ResponseStartLine, headers: HTTPHeaders,
                      chunk: bytes | None = None) -> TornadoFuture[None]:
        assert isinstance(start_line, ResponseStartLine)
        self._send({"k": "head", "s": start_line.code, "r": start_line.reason,
                    "h": [[n, v] for n, v in headers.get_all() if n.lower() not in _HOP_BY_HOP]}, chunk or b"")
        return _done_future()

    def write(self, chunk: bytes) -> TornadoFuture[None]:
        if chunk:
            self._send({"k": "data"}, chunk)
        return _done_future()

    def finish(self) -> None:
        if not self.finished and not self.closed:
            self.finished = True
            self._send({"k": "end"})
        self.tunnel.forget(self)

    def set_close_callback(self, callback: Callable[[], None] | None) -> None:
        self._close_callback = callback

    def close(self) -> None:
        """The receiving node's client hung up (or that node is gone): tell the handler."""
        if self.closed:
            return
        self.closed = True
        self.tunnel.forget(self)
        callback, self._close_callback = self._close_callback, None
        if callback is not None:
            callback()


# ---------------------------------------------------------------------- the receiving node's side


class _Relay:
    """A request of one of our clients, served by another node."""

    __slots__ = ("bytes_unsent", "done", "expected", "home", "kind", "request", "rid", "started", "taken")

    def __init__(self, rid: str, home: str, kind: str, request: HTTPServerRequest) -> None:
        loop = asyncio.get_running_loop()
        self.rid = rid
        self.home = home
        #: "engine" or "sockjs": which error the client understands
        self.kind = kind
        self.request = request
        self.taken: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self.expected = 1
        #: the response head went out to our client: an error can now only cut the connection
        self.started = False
        self.bytes_unsent = 0


class RelayFailed(Exception):
    """A relayed request could not be served: `reason` names the counter."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class Tunnel:
    """Both sides of the relay for one node."""

    def __init__(self, node_id: str, bus: Bus, inbox: Callable[[str], bytes], alarms: Alarms, *,
                 take_timeout: float = 1.5, max_requests: int = 2000,
                 max_response_bytes: int = 8 * 1024 * 1024) -> None:
        self.node_id = node_id
        self.bus = bus
        self.inbox = inbox
        self.alarms = alarms
        self.take_timeout = take_timeout
        self.max_requests = max_requests
        self.max_response_bytes = max_response_bytes
        self.application: Application | None = None
        self.origins: OriginPolicy | None = None
        self._ids = itertools.count(1)
        #: requests of our clients in flight at other nodes
        self._relays: dict[str, _Relay] = {}
        #: requests we serve for other nodes, by (origin, id)
        self._serving: dict[tuple[str, str], TunnelConnection] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.stats = {"relayed": 0, "served": 0}

    def bind(self, application: Application, origins: OriginPolicy | None) -> None:
        self.application = application
        self.origins = origins

    # ------------------------------------------------------------------ receiving node

    async def relay(self, request: HTTPServerRequest, home: str, kind: str) -> None:
        """Serve `request` (body read) through `home`; answer our client whatever happens."""
        if len(self._relays) >= self.max_requests:
            self.answer_error(request, kind, RelayFailed(
                "relay_capacity", f"{self.max_requests} relayed requests in flight; refused one"))
            return
        rid = f"{self.node_id}:{next(self._ids)}"
        relay = self._relays[rid] = _Relay(rid, home, kind, request)
        connection = request.connection
        assert connection is not None
        _set_close_callback(connection, lambda: self._client_gone(relay))
        try:
            header = {"k": "req", "id": rid, "o": self.node_id, "m": request.method, "u": request.uri,
                      "v": request.version, "h": [[n, v] for n, v in request.headers.get_all()
                                                  if n.lower() not in _HOP_BY_HOP],
                      "ip": request.remote_ip or "", "p": request.protocol}
            if home == self.node_id:  # a SockJS session we just claimed: served here, no Redis
                self.serve(header, request.body)
                await relay.done
                return
            try:
                async with asyncio.timeout(self.take_timeout):
                    receivers = await self.bus.publish(self.inbox(home), encode(header, request.body))
            except (RedisUnavailable, TimeoutError) as exc:
                raise RelayFailed("relay_redis_unavailable", f"could not publish to {home}: {exc}") from None
            if not isinstance(receivers, int) or receivers == 0:
                raise RelayFailed("relay_home_not_listening",
                                  f"node {home} does not listen on its inbox (gone or reconnecting)")
            self.stats["relayed"] += 1
            try:
                async with asyncio.timeout(self.take_timeout):
                    await asyncio.shield(relay.taken)
            except TimeoutError:
                self._cancel(relay)
                raise RelayFailed("relay_not_taken",
                                  f"node {home} did not take a request within {self.take_timeout} s") from None
            await relay.done
        except RelayFailed as exc:
            self._fail(relay, exc)
        finally:
            self._relays.pop(rid, None)
            if not relay.done.done():
                relay.done.set_result(None)

    def _client_gone(self, relay: _Relay) -> None:
        """Our client hung up: the home stops serving (a held poll is released there)."""
        if self._relays.pop(relay.rid, None) is not None:
            self._cancel(relay)
            if not relay.done.done():
                relay.done.set_result(None)

    def _cancel(self, relay: _Relay) -> None:
        try:
            self.bus.publish_nowait(self.inbox(relay.home), encode({"k": "cancel", "id": relay.rid,
                                                                    "o": self.node_id}))
        except RedisUnavailable:
            pass

    def _fail(self, relay: _Relay, exc: RelayFailed) -> None:
        self._relays.pop(relay.rid, None)
        if relay.done.done() and relay.started:
            return
        self.alarms.raise_(exc.reason, f"{relay.request.method} {relay.request.path}: {exc.detail}")
        if relay.started:
            relay.request.connection.close()  # type: ignore[union-attr]
        else:
            self.answer_error(relay.request, relay.kind, None)
        if not relay.done.done():
            relay.done.set_result(None)

    def answer_error(self, request: HTTPServerRequest, kind: str, exc: RelayFailed | None) -> None:
        """The error this client's library understands, so it starts afresh instead of hanging."""
        if exc is not None:
            self.alarms.raise_(exc.reason, f"{request.method} {request.path}: {exc.detail}")
        headers = HTTPHeaders({"Cache-Control": "no-store"})
        origin = request.headers.get("Origin")
        if kind == "engine":
            status, reason, body = 400, "Bad Request", b'{"code":1,"message":"Session ID unknown"}'
            headers["Content-Type"] = "application/json"
            if origin is not None and self.origins is not None and \
                    self.origins.allows(origin, request.headers.get("Host")):
                headers["Access-Control-Allow-Origin"] = origin
                headers["Access-Control-Allow-Credentials"] = "true"
        else:
            status, reason, body = 404, "Not Found", b"Session unreachable"
            headers["Content-Type"] = "text/plain; charset=UTF-8"
            headers["Access-Control-Allow-Origin"] = origin if origin and origin != "null" else "*"
            headers["Access-Control-Allow-Credentials"] = "true"
        headers["Content-Length"] = str(len(body))
        connection = request.connection
        assert connection is not None
        _set_close_callback(connection, None)
        try:
            connection.write_headers(ResponseStartLine("HTTP/1.1", status, reason), headers, body)
            connection.finish()
        except StreamClosedError:
            pass

    def _on_reply(self, header: dict[str, Any], body: bytes) -> None:
        relay = self._relays.get(str(header.get("id")))
        if relay is None:
            return  # our client is gone, or we gave up on it
        kind = header.get("k")
        if header.get("n") != relay.expected and kind != "take":
            self._fail(relay, RelayFailed("relay_out_of_order", f"message {header.get('n')} of {relay.rid} "
                                          f"arrived when {relay.expected} was due"))
            return
        if kind == "take":
            if not relay.taken.done():
                relay.taken.set_result(None)
            return
        relay.expected += 1
        if not relay.taken.done():
            relay.taken.set_result(None)
        connection = relay.request.connection
        assert connection is not None
        try:
            if kind == "head":
                headers = HTTPHeaders()
                for name, value in header.get("h", ()):
                    headers.add(name, value)
                relay.started = True
                self._track(relay, connection.write_headers(
                    ResponseStartLine("HTTP/1.1", int(header["s"]), str(header.get("r", ""))), headers,
                    body or None), len(body))
            elif kind == "data":
                self._track(relay, connection.write(body), len(body))
            elif kind == "end":
                _set_close_callback(connection, None)
                connection.finish()
                self._relays.pop(relay.rid, None)
                if not relay.done.done():
                    relay.done.set_result(None)
            elif kind == "fail":
                self._fail(relay, RelayFailed(str(header.get("reason", "relay_refused")),
                                              f"node {relay.home}: {header.get('detail', '')}"))
        except StreamClosedError:
            self._client_gone(relay)

    def _track(self, relay: _Relay, future: Any, size: int) -> None:
        """Bound what waits for a slow client: past the limit, the relay is cut."""
        relay.bytes_unsent += size
        if relay.bytes_unsent > self.max_response_bytes:
            self._fail(relay, RelayFailed("relay_slow_client", "a client did not read a relayed response"))
            self._cancel(relay)
            return

        def written(_: Any) -> None:
            relay.bytes_unsent -= size

        future.add_done_callback(written)

    def node_gone(self, node: str) -> None:
        """`node` left the cluster: our requests held there fail now; its requests here end."""
        for relay in [r for r in self._relays.values() if r.home == node]:
            self._fail(relay, RelayFailed("relay_home_gone", f"node {node} left the cluster while holding a request"))
        for conn in [c for key, c in self._serving.items() if key[0] == node]:
            conn.close()

    def link_down(self) -> None:
        """Redis is gone: nothing more will arrive for any relay in flight."""
        for relay in list(self._relays.values()):
            self._fail(relay, RelayFailed("relay_redis_unavailable", "the redis link broke during a relayed request"))
        for conn in list(self._serving.values()):
            conn.close()

    # ------------------------------------------------------------------ home node

    def reply(self, origin: str, header: dict[str, Any], body: bytes = b"") -> None:
        if origin == self.node_id:  # served for ourselves (a SockJS session we just claimed)
            asyncio.get_running_loop().call_soon(self._on_reply, header, body)
            return
        try:
            self.bus.publish_nowait(self.inbox(origin), encode(header, body))
        except RedisUnavailable:
            pass

    def forget(self, conn: TunnelConnection) -> None:
        if self._serving.get((conn.origin, conn.rid)) is conn:
            del self._serving[(conn.origin, conn.rid)]

    def on_message(self, data: bytes) -> None:
        try:
            header, body = decode(data)
        except ValueError:
            log.warning("malformed tunnel message dropped")
            return
        kind = header.get("k")
        if kind == "req":
            self.serve(header, body)
        elif kind == "cancel":
            conn = self._serving.get((str(header.get("o")), str(header.get("id"))))
            if conn is not None:
                conn.close()
        else:
            self._on_reply(header, body)

    def serve(self, header: dict[str, Any], body: bytes) -> None:
        """Run a relayed request through our application, as if our own client had sent it."""
        origin, rid = str(header.get("o")), str(header.get("id"))
        if self.application is None or len(self._serving) >= self.max_requests:
            self.alarms.raise_("relay_capacity", f"serving {len(self._serving)} relayed requests; refused one")
            self.reply(origin, {"k": "fail", "id": rid, "n": 1, "reason": "relay_capacity",
                                "detail": "too many relayed requests"})
            return
        conn = TunnelConnection(self, origin, rid, str(header.get("ip", "")), str(header.get("p", "http")))
        self._serving[(origin, rid)] = conn
        self.reply(origin, {"k": "take", "id": rid, "n": 0})
        self.stats["served"] += 1
        task = asyncio.get_running_loop().create_task(self._run(conn, header, body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, conn: TunnelConnection, header: dict[str, Any], body: bytes) -> None:
        assert self.application is not None
        try:
            headers = HTTPHeaders()
            for name, value in header.get("h", ()):
                headers.add(name, value)
            delegate = self.application.start_request(None, conn)
            step = delegate.headers_received(RequestStartLine(str(header["m"]), str(header["u"]), str(header["v"])),
                                             headers)
            if step is not None:
                await step
            if body:
                step = delegate.data_received(body)
                if step is not None:
                    await step
            delegate.finish()
        except (HTTPInputError, KeyError, ValueError) as exc:
            log.info("relayed request refused: %s", exc)
            if not conn.finished and not conn.closed:
                conn.write_headers(ResponseStartLine("HTTP/1.1", 400, "Bad Request"),
                                   HTTPHeaders({"Content-Length": "0"}))
                conn.finish()

    async def stop(self) -> None:
        for conn in list(self._serving.values()):
            conn.close()
        for relay in list(self._relays.values()):
            self._fail(relay, RelayFailed("relay_node_stopping", "this node is stopping"))
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def describe(self) -> dict[str, Any]:
        return {**self.stats, "in_flight": len(self._relays), "serving": len(self._serving)}
