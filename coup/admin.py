"""The Socket.IO Admin UI's protocol: the ``/admin`` namespace its hosted page connects to.

What @socket.io/admin-ui's ``instrument()`` does for a Node server, spoken by us, so the stock
UI (https://admin.socket.io, or its ``ui/dist`` from npm) shows our nodes: every node emits
``server_stats`` every 2 s to the admin namespace (cluster-wide, so a UI connected to one
node sees all of them), an admin socket gets ``config`` and ``all_sockets`` when it connects,
and ``socket_connected`` / ``socket_disconnected`` / ``room_joined`` / ``room_left`` /
``socket_updated`` follow. The events per second on its dashboard come from the node's
metrics (`coup.metrics`), by difference every 2 s: the hot path pays nothing more.

Differences from the reference, on purpose: client events are not echoed to the UI one by
one (``event_received`` / ``event_sent``: that would put a broadcast on every event of every
client); room changes are found by comparing each local socket's rooms every 2 s, so they
show up to 2 s late; headers that carry credentials (cookie, authorization) are not shown.

Off unless ``COUP_ADMIN_USER`` and ``COUP_ADMIN_PASSWORD`` (a bcrypt hash) are set; read-only
unless ``COUP_ADMIN_READONLY=0``. A login is checked with bcrypt on a thread (at most two at
a time; more are refused, so guessing costs the guesser); the UI then reconnects with a
session id, an HMAC of its expiry keyed by the password hash, so every node accepts it and
changing the password ends every session.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import socket as sockets
import time
import weakref
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from coup.core import ClientError, ConnectRefused, Namespace, Socket, SocketInfo, SocketServer
from coup.metrics import Metrics

log = logging.getLogger(__name__)

NAMESPACE = "/admin"
STATS_INTERVAL = 2.0
SESSION_TTL = 24 * 3600.0
#: logins checked at the same time (bcrypt costs ~0.2 s of CPU each); more are refused
MAX_LOGINS_IN_FLIGHT = 2
#: the key in `socket.data` the reference uses for what other nodes need to show a socket
ADMIN_DATA = "_admin"
#: request headers the view does not show (credentials)
HIDDEN_HEADERS = frozenset({"cookie", "authorization", "proxy-authorization"})
WRITE_FEATURES = ("EMIT", "JOIN", "LEAVE", "DISCONNECT", "MJOIN", "MLEAVE", "MDISCONNECT")


def _timestamp() -> str:
    """What the reference sends as `new Date()`: ISO-8601 with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AdminSessions:
    """Stateless session ids: ``expiry.hmac(password hash, user|expiry)``, valid on every node."""

    def __init__(self, user: str, password_hash: str) -> None:
        self.user = user
        self._key = hashlib.sha256(b"coup-admin-session\0" + password_hash.encode()).digest()

    def _mac(self, expires: int) -> str:
        return hmac.new(self._key, f"{self.user}|{expires}".encode(), hashlib.sha256).hexdigest()

    def issue(self, now: float | None = None) -> str:
        expires = int((now or time.time()) + SESSION_TTL)
        return f"{expires}.{self._mac(expires)}"

    def valid(self, session_id: object, now: float | None = None) -> bool:
        if not isinstance(session_id, str) or len(session_id) > 128:
            return False
        expires, _, mac = session_id.partition(".")
        if not expires.isdigit() or int(expires) < (now or time.time()):
            return False
        return hmac.compare_digest(mac, self._mac(int(expires)))


class AdminView:
    """The ``/admin`` namespace of one node; a `NodeService` (started and stopped with it)."""

    def __init__(self, server: SocketServer, user: str, password_hash: str, *, readonly: bool = True,
                 metrics: Metrics | None = None) -> None:
        self.server = server
        self.user = user
        self.password_hash = password_hash.encode()
        self.readonly = readonly
        self.metrics = metrics
        self.sessions = AdminSessions(user, password_hash)
        self.nsp = server.of(NAMESPACE)
        self.nsp.use(self.authenticate)
        self.nsp.on_connect(self.on_admin_connect)
        self._logins = 0
        #: admin sockets that signed in with the password (they get a session id)
        self._signed_in: weakref.WeakSet[Socket] = weakref.WeakSet()
        self._watched: set[str] = set()
        #: (namespace, sid) -> (rooms, transport) of local sockets, as last shown
        self._shown: dict[tuple[str, str], tuple[frozenset[str], str]] = {}
        self._last_totals: dict[str, float] = {}
        self._last_closed: dict[str, int] = {}
        self._started = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self.hostname = sockets.gethostname()
        if not readonly:
            self._register_write_handlers()
        self._watch_namespaces()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._started = time.monotonic()
        if self.metrics is not None:
            self._last_totals = self.metrics.totals()
            self._last_closed = dict(self.metrics.closed)
        self._task = asyncio.get_running_loop().create_task(self._tick_loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    # ------------------------------------------------------------------ authentication

    async def authenticate(self, socket: Socket, auth: dict[str, Any]) -> None:
        if self.sessions.valid(auth.get("sessionId")):
            return
        username, password = auth.get("username"), auth.get("password")
        if isinstance(username, str) and isinstance(password, str) and len(password) <= 1024 \
                and hmac.compare_digest(username.encode(), self.user.encode()):
            if self._logins >= MAX_LOGINS_IN_FLIGHT:
                log.warning("admin login refused: %d already being checked", self._logins)
                raise ConnectRefused("too many login attempts; try again")
            self._logins += 1
            try:
                matches = await asyncio.get_running_loop().run_in_executor(None, self._check, password.encode())
            finally:
                self._logins -= 1
            if matches:
                self._signed_in.add(socket)
                log.info("admin %s signed in from %s", username, socket.handshake.address)
                return
        log.warning("admin login refused from %s", socket.handshake.address)
        raise ConnectRefused("invalid credentials")

    def _check(self, password: bytes) -> bool:
        import bcrypt

        try:
            return bool(bcrypt.checkpw(password, self.password_hash))
        except ValueError:
            return False

    async def on_admin_connect(self, socket: Socket) -> None:
        if socket in self._signed_in:
            socket.emit("session", self.sessions.issue())
        features = ["AGGREGATED_EVENTS", "ALL_EVENTS"] + ([] if self.readonly else list(WRITE_FEATURES))
        socket.emit("config", {"supportedFeatures": features})
        socket.emit("all_sockets", await self.all_sockets())
        socket.emit("server_stats", self.server_stats(aggregate=False))

    # ------------------------------------------------------------------ what the UI shows

    def _watch_namespaces(self) -> None:
        """Hook every namespace (also ones made later, found at each tick)."""
        for nsp in list(self.server.namespaces.values()):
            if nsp.name not in self._watched:
                self._watched.add(nsp.name)
                nsp.on_connect(self._socket_connected)
                nsp.on_disconnect(self._socket_disconnected)

    async def _socket_connected(self, socket: Socket) -> None:
        if not socket.connected:
            return
        transport = socket.session.transport.name
        # the reference keeps these in socket.data, which other nodes see through fetch_sockets
        socket.data[ADMIN_DATA] = {"clientId": socket.session.sid[:12], "transport": transport}
        self._shown[socket.nsp.name, socket.id] = (socket.rooms, transport)
        self.nsp.emit("socket_connected", self.serialize(socket), _timestamp())

    async def _socket_disconnected(self, socket: Socket, reason: str) -> None:
        self._shown.pop((socket.nsp.name, socket.id), None)
        self.nsp.emit("socket_disconnected", socket.nsp.name, socket.id, reason, _timestamp())

    def serialize(self, socket: Socket) -> dict[str, Any]:
        """A local socket as the UI shows it (`SerializedSocket`)."""
        handshake = socket.handshake
        headers = {k: v for k, v in handshake.headers.items() if k.lower() not in HIDDEN_HEADERS}
        return {
            "id": socket.id,
            "clientId": socket.session.sid[:12],
            "transport": socket.session.transport.name,
            "nsp": socket.nsp.name,
            "data": {k: v for k, v in socket.data.items() if k != ADMIN_DATA},
            "handshake": {
                "address": headers.get("x-forwarded-for") or handshake.address,
                "headers": headers,
                "query": dict(handshake.query),
                "issued": int(handshake.issued * 1000),
                "secure": handshake.secure,
                "time": datetime.fromtimestamp(handshake.issued, UTC).strftime("%a %b %d %Y %H:%M:%S GMT+0000"),
                "url": handshake.url,
                "xdomain": handshake.xdomain,
            },
            "rooms": sorted(socket.rooms),
        }

    @staticmethod
    def serialize_remote(info: SocketInfo) -> dict[str, Any]:
        """A socket on another node: what `fetch_sockets` tells of it."""
        found = info.data.get(ADMIN_DATA)
        admin: dict[str, Any] = found if isinstance(found, dict) else {}
        return {"id": info.id, "clientId": admin.get("clientId"), "transport": admin.get("transport"),
                "nsp": info.namespace, "data": {k: v for k, v in info.data.items() if k != ADMIN_DATA},
                "handshake": {}, "rooms": sorted(info.rooms)}

    async def all_sockets(self) -> list[dict[str, Any]]:
        """Every socket of every namespace, cluster-wide."""
        found: list[dict[str, Any]] = []
        for nsp in list(self.server.namespaces.values()):
            local = nsp.sockets
            for info in await nsp.fetch_sockets():
                mine = local.get(info.id)
                found.append(self.serialize(mine) if mine is not None else self.serialize_remote(info))
        return found

    def server_stats(self, *, aggregate: bool = True) -> dict[str, Any]:
        engine = self.server.engine
        polling = sum(1 for s in engine.sessions.values() if s.transport.name == "polling")
        return {
            "serverId": self.server.node_id,
            "hostname": self.hostname,
            "pid": os.getpid(),
            "uptime": time.monotonic() - self._started,
            "clientsCount": len(engine.sessions),
            "pollingClientsCount": polling,
            "aggregatedEvents": self._aggregated_events() if aggregate else [],
            "namespaces": [{"name": nsp.name, "socketsCount": len(nsp.sockets)}
                           for nsp in self.server.namespaces.values()],
        }

    def _aggregated_events(self) -> list[dict[str, Any]]:
        """Counts since the last tick, as the UI's charts want them (per second, by type)."""
        if self.metrics is None:
            return []
        second = int(time.time()) * 1000
        totals = self.metrics.totals()
        events = [{"timestamp": second, "type": kind, "count": totals[kind] - self._last_totals.get(kind, 0)}
                  for kind in totals if totals[kind] > self._last_totals.get(kind, 0)]
        self._last_totals = totals
        closed = dict(self.metrics.closed)
        for reason, count in closed.items():
            if count > self._last_closed.get(reason, 0):
                events.append({"timestamp": second, "type": "rawDisconnection", "subType": reason,
                               "count": count - self._last_closed.get(reason, 0)})
        self._last_closed = closed
        return events

    def _room_changes(self) -> None:
        """Tell the UI which local sockets joined or left rooms, or changed transport, since the last tick."""
        for nsp in list(self.server.namespaces.values()):
            for socket in list(nsp.sockets.values()):
                key = (nsp.name, socket.id)
                shown = self._shown.get(key)
                if shown is None:
                    continue  # its connect handler has not run yet
                rooms, transport = socket.rooms, socket.session.transport.name
                if (rooms, transport) == shown:
                    continue
                now = _timestamp()
                for room in sorted(rooms - shown[0]):
                    self.nsp.emit("room_joined", nsp.name, room, socket.id, now)
                for room in sorted(shown[0] - rooms):
                    self.nsp.emit("room_left", nsp.name, room, socket.id, now)
                if transport != shown[1]:
                    admin = socket.data.get(ADMIN_DATA)
                    if isinstance(admin, dict):
                        admin["transport"] = transport
                    self.nsp.emit("socket_updated", {"id": socket.id, "nsp": nsp.name, "transport": transport})
                self._shown[key] = (rooms, transport)

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            try:
                self._watch_namespaces()
                self._room_changes()
                self.nsp.emit("server_stats", self.server_stats())
            except Exception:
                log.exception("admin view: stats tick failed")

    # ------------------------------------------------------------------ write features (COUP_ADMIN_READONLY=0)

    def _register_write_handlers(self) -> None:
        handlers: dict[str, Callable[[Socket, list[Any]], Awaitable[None]]] = {
            "emit": self._emit, "join": self._join, "leave": self._leave, "_disconnect": self._disconnect}
        for event, handler in handlers.items():
            self.nsp.on(event, handler)

    def _target(self, args: list[Any], filter_at: int) -> tuple[Namespace, str | None]:
        name = args[0] if args else None
        nsp = self.server.namespaces.get(name) if isinstance(name, str) else None
        if nsp is None:
            raise ClientError("BAD_REQUEST", "unknown namespace")
        room = args[filter_at] if len(args) > filter_at else None
        if room is not None and not isinstance(room, str):
            raise ClientError("BAD_REQUEST", "the filter must be a room name")
        return nsp, room or None

    async def _emit(self, socket: Socket, args: list[Any]) -> None:
        nsp, room = self._target(args, 1)
        if len(args) < 3 or not isinstance(args[2], str):
            raise ClientError("BAD_REQUEST", "an event name is required")
        log.info("admin: emit %r in %s%s", args[2], nsp.name, f" room {room}" if room else "")
        (nsp.to(room) if room else nsp.except_()).emit(args[2], *args[3:])

    async def _join(self, socket: Socket, args: list[Any]) -> None:
        await self._rooms(args, join=True)

    async def _leave(self, socket: Socket, args: list[Any]) -> None:
        await self._rooms(args, join=False)

    async def _rooms(self, args: list[Any], *, join: bool) -> None:
        nsp, room = self._target(args, 2)
        if len(args) < 2 or not isinstance(args[1], str):
            raise ClientError("BAD_REQUEST", "a room name is required")
        log.info("admin: sockets in %s%s %s %s", nsp.name, f" room {room}" if room else "",
                 "join" if join else "leave", args[1])
        operator = nsp.to(room) if room else nsp.except_()
        await (operator.sockets_join(args[1]) if join else operator.sockets_leave(args[1]))

    async def _disconnect(self, socket: Socket, args: list[Any]) -> None:
        nsp, room = self._target(args, 2)
        close = bool(args[1]) if len(args) > 1 else False
        log.info("admin: disconnect sockets in %s%s", nsp.name, f" room {room}" if room else "")
        await (nsp.to(room) if room else nsp.except_()).disconnect_sockets(close)


__all__ = ["NAMESPACE", "AdminSessions", "AdminView"]
