"""HTTP for the cluster: requests for sessions that live on another node, and `/api/cluster`.

Without sticky sessions a PaaS router sends each HTTP request to any node, and on the
strictest platforms the nodes cannot connect to each other. `RelayMatcher` comes before
every other route and picks out requests that another node must serve:

* Engine.IO polling (GET, POST, OPTIONS) with a `sid` that is not ours: its home is in the
  sid (``node.xxxx``);
* SockJS HTTP transports for a session that is not ours: its home is in Redis
  (`SessionHomes`), claimed by the first node that sees the session.

`relay_request` then hands them to the `Tunnel` (Redis). Requests arriving through the
tunnel are never relayed again. WebSocket upgrades are not relayed (see `coup.cluster.moves`).
"""

from __future__ import annotations

import asyncio
import re
import secrets
from typing import TYPE_CHECKING, Any

from tornado.httputil import HTTPServerRequest
from tornado.routing import Matcher, Rule
from tornado.web import RequestHandler

from coup.cluster.tunnel import RelayFailed, TunnelConnection
from coup.config import Secret

if TYPE_CHECKING:
    from coup.cluster.node import Cluster
    from coup.engine.server import EngineServer

#: SockJS transports that receive (and so may open) a session
SOCKJS_RECEIVING = frozenset({"xhr", "xhr_streaming", "jsonp", "eventsource", "htmlfile"})
#: SockJS transports that deliver to an existing session
SOCKJS_SENDING = frozenset({"xhr_send", "jsonp_send"})


class RelayMatcher(Matcher):
    """Session requests this node cannot serve itself: `{"kind", "home" | "session"}` for `relay_request`."""

    def __init__(self, cluster: Cluster, engine: EngineServer, engine_path: str, sockjs_prefix: str | None) -> None:
        self.cluster = cluster
        self.engine = engine
        self.engine_path = engine_path.rstrip("/") + "/"
        self.sockjs = re.compile(re.escape(sockjs_prefix.rstrip("/")) + r"/[^/.]+/([^/.]+)/([a-z_]+)$") \
            if sockjs_prefix else None

    def match(self, request: HTTPServerRequest) -> dict[str, Any] | None:
        if isinstance(request.connection, TunnelConnection):
            return None  # relayed to us: ours to answer, whatever the answer is
        path = request.path
        if path == self.engine_path or path == self.engine_path[:-1]:
            return self._engine(request)
        if self.sockjs is not None and request.method in ("GET", "POST"):
            found = self.sockjs.match(path)
            if found is not None:
                session, transport = found.groups()
                if transport in SOCKJS_RECEIVING or transport in SOCKJS_SENDING:
                    if not self.cluster.sockjs_local(session):
                        return {"kind": "sockjs", "session": session, "opens": transport in SOCKJS_RECEIVING}
        return None

    def _engine(self, request: HTTPServerRequest) -> dict[str, Any] | None:
        query = request.query_arguments
        sids = query.get("sid")
        if not sids:
            return None
        transport = query.get("transport")
        if transport and transport[-1] == b"websocket":
            return None  # an upgrade: served here (and the session moved here) or refused here
        sid = sids[-1].decode("latin-1")
        if sid in self.engine.sessions:
            return None
        node = self.cluster.node_of_sid(sid)
        if node is None or node == self.cluster.node_id:
            return None  # ours and gone, or not a cluster sid: "Session ID unknown", as always
        return {"kind": "engine", "home": node}


def relay_request(request: HTTPServerRequest, *, cluster: Cluster, kind: str, home: str | None = None,
                  session: str | None = None, opens: bool = False) -> None:
    """The target of `RelayMatcher`'s rule: called once the request's body is read."""
    cluster.spawn(_relay(request, cluster, kind, home, session, opens))


async def _relay(request: HTTPServerRequest, cluster: Cluster, kind: str, home: str | None, session: str | None,
                 opens: bool) -> None:
    tunnel = cluster.tunnel
    try:
        if kind == "sockjs":
            assert session is not None
            try:
                async with asyncio.timeout(tunnel.take_timeout):
                    home = await (cluster.sockjs_homes.claim(session) if opens
                                  else cluster.sockjs_homes.lookup(session))
            except Exception as exc:
                raise RelayFailed("relay_redis_unavailable", f"SockJS session home not known: {exc}") from None
            if home is None:
                home = cluster.node_id  # no such session anywhere: ours to answer (404)
        assert home is not None
        if home != cluster.node_id and home not in cluster.registry.ring.nodes:
            raise RelayFailed("relay_home_unknown", f"session of node {home}, which is not in the cluster")
    except RelayFailed as exc:
        tunnel.answer_error(request, kind, exc)
        return
    await tunnel.relay(request, home, kind)


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

    async def get(self) -> None:
        room = self.get_query_argument("room", "")
        if not room:
            self.fail(400, "BAD_REQUEST", "query parameter 'room' is required")
            return
        self.finish({"room": room, "node": await self.cluster.rooms.current_owner(room),
                     "epoch": self.cluster.registry.ring.epoch})


def cluster_rules(cluster: Cluster, engine: EngineServer, engine_path: str, sockjs_prefix: str | None,
                  token: Secret | None) -> tuple[list[Rule], list[Any]]:
    """(rules that must come before the Engine.IO routes, API routes)."""
    kwargs = {"cluster": cluster, "token": token}
    relay = Rule(RelayMatcher(cluster, engine, engine_path, sockjs_prefix), _bound_relay(cluster))
    return (
        [relay],
        [(r"/api/cluster", ClusterInfoHandler, kwargs), (r"/api/cluster/owner", OwnerHandler, kwargs)],
    )


def _bound_relay(cluster: Cluster) -> Any:
    def target(request: HTTPServerRequest, **params: Any) -> None:
        relay_request(request, cluster=cluster, **params)
    return target
