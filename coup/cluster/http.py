"""HTTP for the cluster: routing session requests to their node, and `/api/cluster`.

Without sticky sessions a PaaS router sends each long-polling request to any node, but an
Engine.IO session lives on one. Session ids start with their node's id, so a node that gets
a request for another node's session forwards it to that node's registered address: polling
GET/POST as one HTTP/1.0 exchange (close-delimited, so nothing to re-chunk), a WebSocket
upgrade as a byte splice. A request already forwarded once is never forwarded again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import TYPE_CHECKING, Any

from tornado.httputil import HTTPServerRequest
from tornado.iostream import StreamClosedError
from tornado.routing import Matcher, Rule
from tornado.web import RequestHandler

from coup.config import Secret
from coup.transports.websocket import take_socket

if TYPE_CHECKING:
    from coup.cluster.node import Cluster

log = logging.getLogger(__name__)

FORWARDED_HEADER = "X-Coup-Forwarded"
#: headers that describe one hop, not the request (RFC 9110 section 7.6.1)
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                         "upgrade", "content-length", "host"})
_MAX_HEAD = 64 * 1024


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class ForwardMatcher(Matcher):
    """Requests at the Engine.IO path for a session that lives on another live node."""

    def __init__(self, path: str, cluster: Cluster) -> None:
        self.path = path.rstrip("/") + "/"
        self.cluster = cluster

    def match(self, request: HTTPServerRequest) -> dict[str, Any] | None:
        if not (request.path == self.path or request.path == self.path[:-1]):
            return None
        values = request.query_arguments.get("sid")
        if not values or FORWARDED_HEADER in request.headers:
            return None
        node = self.cluster.node_of_sid(values[-1].decode("latin-1"))
        if node is None or node == self.cluster.node_id:
            return None
        address = self.cluster.registry.addresses.get(node)
        if not address:
            return None  # unknown or dead node: answered locally (unknown sid), as Engine.IO would
        return {"path_kwargs": {"address": address.encode()}}


class ForwardHandler(RequestHandler):
    """Relays one request to the node that holds its session."""

    def initialize(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._upstream: asyncio.StreamWriter | None = None

    def _head(self, address: str, *, keep_hop_headers: bool, version: str) -> bytes:
        request = self.request
        lines = [f"{request.method} {request.uri} {version}", f"Host: {address}"]
        for name, value in request.headers.get_all():
            if keep_hop_headers and name.lower() == "host":
                continue
            if not keep_hop_headers and name.lower() in _HOP_BY_HOP:
                continue
            if name.lower() in (FORWARDED_HEADER.lower(), "x-forwarded-for"):
                continue
            lines.append(f"{name}: {value}")
        previous = request.headers.get("X-Forwarded-For")
        client = request.remote_ip or ""
        lines.append(f"X-Forwarded-For: {previous}, {client}" if previous else f"X-Forwarded-For: {client}")
        lines.append(f"{FORWARDED_HEADER}: {self.cluster.node_id}")
        if not keep_hop_headers:
            lines.append(f"Content-Length: {len(request.body)}")
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _open(self, address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        host, port = _split_address(address)
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5.0)
        self._upstream = writer
        return reader, writer

    async def _relay(self, address: str) -> None:
        try:
            reader, writer = await self._open(address)
            writer.write(self._head(address, keep_hop_headers=False, version="HTTP/1.0") + self.request.body)
            head = await reader.readuntil(b"\r\n\r\n")
            body = await reader.read()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            log.info("forwarding to %s failed: %s", address, exc)
            self.set_status(502)
            self.finish({"code": 1, "message": "Session unreachable"})
            return
        finally:
            self._close_upstream()
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.set_status(int(status_line.split(" ", 2)[1]))
        self.clear_header("Content-Type")
        for line in header_lines:
            name, _, value = line.partition(":")
            if name and name.lower() not in _HOP_BY_HOP and name.lower() not in ("date", "server"):
                self.add_header(name, value.strip())
        self.finish(body)

    async def get(self, address: str) -> None:
        if self.get_query_argument("transport", "") == "websocket" and \
                self.request.headers.get("Upgrade", "").lower() == "websocket":
            await self._splice(address)
        else:
            await self._relay(address)

    async def post(self, address: str) -> None:
        await self._relay(address)

    async def options(self, address: str) -> None:
        await self._relay(address)

    async def _splice(self, address: str) -> None:
        """A WebSocket upgrade of a polling session held elsewhere: pipe the bytes both ways."""
        try:
            up_reader, up_writer = await self._open(address)
        except (OSError, TimeoutError) as exc:
            log.info("forwarding a WebSocket upgrade to %s failed: %s", address, exc)
            self._upstream = None
            self.set_status(502)
            self.finish({"code": 1, "message": "Session unreachable"})
            return
        up_writer.write(self._head(address, keep_hop_headers=True, version="HTTP/1.1"))
        sock, read_ahead = take_socket(self.detach())
        if read_ahead:
            up_writer.write(read_ahead)
        down_reader, down_writer = await asyncio.open_connection(sock=sock)
        await asyncio.gather(_pipe(up_reader, down_writer), _pipe(down_reader, up_writer))
        self._upstream = None

    def _close_upstream(self) -> None:
        writer, self._upstream = self._upstream, None
        if writer is not None:
            writer.close()

    def on_connection_close(self) -> None:
        # the client hung up on a held GET: hang up upstream too, so the owner stops holding it
        self._close_upstream()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (OSError, StreamClosedError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


class ServiceHandler(RequestHandler):
    """JSON endpoints for operators and trusted backends: ``Authorization: Bearer $COUP_SERVICE_TOKEN``."""

    def initialize(self, cluster: Cluster, token: Secret | None) -> None:
        self.cluster = cluster
        self.token = token

    def prepare(self) -> None:
        self.set_header("Cache-Control", "no-store")
        if self.token is None:
            self.fail(403, "FORBIDDEN", "COUP_SERVICE_TOKEN is not configured")
            return
        scheme, _, given = self.request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(),
                                                                     self.token.reveal().encode()):
            self.set_header("WWW-Authenticate", "Bearer")
            self.fail(401, "UNAUTHORIZED", "A valid service token is required")

    def fail(self, status: int, code: str, message: str) -> None:
        self.set_status(status)
        self.finish({"error": {"code": code, "message": message}})

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.finish({"error": {"code": "INTERNAL" if status_code >= 500 else "BAD_REQUEST",
                               "message": self._reason}})


class ClusterInfoHandler(ServiceHandler):
    """``GET /api/cluster``: the live nodes, the ring epoch, this node's link state."""

    def get(self) -> None:
        self.finish(self.cluster.describe())


class OwnerHandler(ServiceHandler):
    """``GET /api/cluster/owner?room=study:1``: ``{room, node, epoch}``."""

    def get(self) -> None:
        room = self.get_query_argument("room", "")
        if not room:
            self.fail(400, "BAD_REQUEST", "query parameter 'room' is required")
            return
        self.finish({"room": room, "node": self.cluster.registry.owner(room),
                     "epoch": self.cluster.registry.ring.epoch})


def cluster_rules(cluster: Cluster, engine_path: str, token: Secret | None) -> tuple[list[Rule], list[Any]]:
    """(rules that must come before the Engine.IO routes, API routes)."""
    kwargs = {"cluster": cluster, "token": token}
    return (
        [Rule(ForwardMatcher(engine_path, cluster), ForwardHandler, {"cluster": cluster})],
        [(r"/api/cluster", ClusterInfoHandler, kwargs), (r"/api/cluster/owner", OwnerHandler, kwargs)],
    )
