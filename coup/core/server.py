"""The Socket.IO server: namespaces on top of an Engine.IO server, and the connect flow."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import Any

from coup.core.adapter import Adapter, MemoryAdapter
from coup.core.client import Client
from coup.core.errors import ConnectRefused
from coup.core.hold import HeldPackets
from coup.core.namespace import Namespace
from coup.core.options import ServerOptions
from coup.core.presence import MemoryPresence, Presence
from coup.core.recovery import RestoredSession, SessionRecord
from coup.core.rooms import LocalRoomRouter, RoomRouter
from coup.core.socket import Socket, SocketContext
from coup.engine.server import EngineServer
from coup.engine.session import Session
from coup.logs import log_context
from coup.metrics import Metrics
from coup.protocol.socketio import SocketPacket, SocketPacketType
from coup.protocol.wire import Outbound
from coup.tasks import spawn_kept

log = logging.getLogger(__name__)

AdapterFactory = Callable[[Namespace], Adapter]


class SocketServer:
    def __init__(self, engine: EngineServer, options: ServerOptions | None = None, *,
                 adapter_factory: AdapterFactory = MemoryAdapter,
                 presence: Presence | None = None,
                 rooms: RoomRouter | None = None,
                 node_id: str | None = None,
                 default_ack_timeout: float = 10.0) -> None:
        self.engine = engine
        self.default_ack_timeout = default_ack_timeout
        self._tasks: set[asyncio.Task[Any]] = set()
        self.options = options or ServerOptions()  # also builds `socket_context`
        self.adapter_factory = adapter_factory
        self.node_id = node_id or secrets.token_hex(4)
        #: who is online, by application key (a user id), across every node
        self.presence: Presence = presence or MemoryPresence()
        #: room-scoped commands, executed by the room's owner node
        self.rooms: RoomRouter = rooms or LocalRoomRouter()
        self.namespaces: dict[str, Namespace] = {}
        #: who a socket's user is, for log lines about it (the application knows; None: nobody)
        self.describe_user: Callable[[Socket], object] | None = None
        #: client address -> its open connections (the per-address cap)
        self.connections_by_address: dict[str, int] = {}
        engine.on_connection = self._on_engine_connection
        self.of("/")

    def of(self, name: str) -> Namespace:
        """The namespace `name`, created on first use."""
        if not name.startswith("/"):
            name = "/" + name
        nsp = self.namespaces.get(name)
        if nsp is None:
            nsp = self.namespaces[name] = Namespace(self, name)
        return nsp

    @property
    def options(self) -> ServerOptions:
        return self._options

    @options.setter
    def options(self, options: ServerOptions) -> None:
        self._options = options
        #: what every socket is built with (`Socket` never reaches back through the server)
        self.socket_context = SocketContext(options, self.engine.options.max_buffered_bytes,
                                            self.default_ack_timeout, self.engine.metrics, self.spawn,
                                            self.log_user)

    def log_user(self, socket: Socket) -> str | None:
        describe = self.describe_user
        if describe is None:
            return None
        user = describe(socket)
        return None if user is None else str(user)

    @property
    def metrics(self) -> Metrics | None:
        """Where this node counts (the engine's; None when it counts nothing)."""
        return self.engine.metrics

    @property
    def main(self) -> Namespace:
        return self.namespaces["/"]

    async def start(self) -> None:
        """Initialise every namespace's adapter (a cluster adapter subscribes here)."""
        for nsp in list(self.namespaces.values()):
            await nsp.adapter.init()

    async def close(self, grace: float = 5.0) -> None:
        """Disconnect every client ("server shutting down"), give the disconnect handlers and
        the events queued before them up to `grace` seconds, then close the adapters (the
        handlers may still need them, e.g. to update presence)."""
        for nsp in list(self.namespaces.values()):
            for socket in list(nsp.sockets.values()):
                socket.client.close("server shutting down")
        self.engine.close_all()
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=grace)
            for task in pending:
                log.warning("shutdown: cancelling %r after %.1f s", task, grace)
                task.cancel()
        for nsp in list(self.namespaces.values()):
            await nsp.adapter.close()
        for task in list(self._tasks):
            task.cancel()

    async def wait_tasks(self, timeout: float) -> None:
        """Let the background tasks running now (handlers, disconnects) finish, for `timeout` s."""
        if self._tasks and timeout > 0:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    async def drain_clients(self, spread: float, deadline: float, reason: str = "server shutting down") -> int:
        """Close every connection so its client reconnects (elsewhere), without losing a reply.

        The closes are spread evenly over `spread` seconds, so the clients do not all come
        back in the same millisecond. At its turn a connection is closed the first moment no
        handler of it runs (so every event it sent is acknowledged), gracefully: what is queued
        for it, those acks included, is delivered before the close. An event still on its way
        then is not handled: its client has no ack for it and sends it again after it
        reconnected (same `clientMessageId`, stored once). `deadline` (loop time) bounds the
        wait for handlers. Returns how many connections were closed.
        """
        clients = [session.handler for session in list(self.engine.sessions.values())
                   if isinstance(session.handler, Client) and not session.handler.closed]
        if not clients:
            return 0
        loop = asyncio.get_running_loop()
        start = loop.time()
        step = spread / len(clients)

        async def close(index: int, client: Client) -> None:
            await asyncio.sleep(max(0.0, start + index * step - loop.time()))
            while not client.closed:  # a handler's ack is sent before the close
                if client.idle or loop.time() >= deadline:
                    client.close(reason)
                    break
                await asyncio.sleep(0.01)

        await asyncio.gather(*(close(i, c) for i, c in enumerate(clients)))
        return len(clients)

    # ------------------------------------------------------------------ connection flow

    def _on_engine_connection(self, session: Session) -> None:
        client = Client(self, session)
        session.handler = client
        address = session.handshake.address
        self.connections_by_address[address] = self.connections_by_address.get(address, 0) + 1
        client.connect_timer = self.engine.timers.schedule(
            self.engine.now() + self.options.connect_timeout, client,
            slack=min(self.engine.options.timer_slack, self.options.connect_timeout / 10))

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run a background task that is not lost to garbage collection and is cancelled on close."""
        return spawn_kept(self._tasks, coro, self.engine.loop)

    def start_connect(self, client: Client, name: str, auth: dict[str, Any]) -> None:
        self.spawn(self._connect(client, name, auth))

    def client_closed(self, client: Client) -> None:
        address = client.session.handshake.address
        left = self.connections_by_address.get(address, 1) - 1
        if left > 0:
            self.connections_by_address[address] = left
        else:
            self.connections_by_address.pop(address, None)

    def _over_address_cap(self, client: Client, name: str) -> bool:
        """Refuse (CONNECT_ERROR with a code, then close) a connection from an address that holds too many."""
        limit = self.options.max_connections_per_address
        address = client.session.handshake.address
        if limit is None or self.connections_by_address.get(address, 0) <= limit:
            return False
        log.info("session %s refused: %s holds more than %d connections", client.session.sid, address, limit)
        client.send_packet(SocketPacket(SocketPacketType.CONNECT_ERROR, name, {
            "message": "Too many connections from this address",
            "data": {"code": "TOO_MANY_CONNECTIONS", "limit": limit}}))
        client.close("forced close")
        return True

    async def _connect(self, client: Client, name: str, auth: dict[str, Any]) -> None:
        log_context(client.session.sid)  # this task's log lines are about this client
        socket: Socket | None = None
        try:
            nsp = self.namespaces.get(name)
            if nsp is None:
                if self.engine.metrics is not None:  # the client's name is no label: it is unbounded
                    self.engine.metrics.connect_refusals["", "invalid namespace"] += 1
                client.send_packet(SocketPacket(SocketPacketType.CONNECT_ERROR, name,
                                                {"message": "Invalid namespace"}))
                return
            if self._over_address_cap(client, name):
                return
            made = await self._make_socket(nsp, client, auth)
            if made is None:
                return
            socket, restored = made
            # from here on the socket receives, but into its hold (`coup.core.hold`) until
            # the CONNECT reply is out; joining may await (a cluster subscribes)
            held = socket.sink
            assert isinstance(held, HeldPackets)
            nsp.add(socket)
            client.add(socket)
            socket.connected = True
            await nsp.adapter.add_all(socket.id, socket.rooms_to_join())
            if client.closed or held.overflowed:
                return  # the connection is gone or going; the socket's on_close cleans up
            missed: tuple[Outbound, ...] = ()
            if restored is not None:
                # computed after the join: what was stored before it is here, what came
                # after it is held too (`release` sends each packet once)
                replay = await nsp.adapter.replay(restored)
                if replay is None:
                    # the buffer moved past the offset, or (in a cluster) the log could not be
                    # read or its pushes were not heard in time: no partial replay; the session's
                    # record is kept again when this connection closes, so the next attempt
                    # recovers if the buffer still holds the offset, and starts afresh if not
                    log.warning("session %s: socket %s's missed packets could not be replayed while it "
                                "connected; closing without a partial replay", client.session.sid, socket.id)
                    client.session.close("transport error", graceful=False)
                    return
                missed = replay
            reply: dict[str, Any] = {"sid": socket.id}
            if socket.pid is not None:
                reply["pid"] = socket.pid
            client.send_packet(SocketPacket(SocketPacketType.CONNECT, name, reply))
            socket.sink = client.session
            held.release(missed)
            if self.engine.metrics is not None:
                self.engine.metrics.connects[(name,)] += 1
            await nsp.run_connect_handlers(socket)
        except Exception:
            log.exception("connecting session %s to %s failed", client.session.sid, name)
            if self.engine.metrics is not None:
                self.engine.metrics.connect_refusals[name, "error"] += 1
            if socket is not None:
                socket.on_close("server namespace disconnect")
            if not client.closed:
                client.send_packet(SocketPacket(SocketPacketType.CONNECT_ERROR, name,
                                                {"message": "Internal server error"}))
        finally:
            client.connecting.discard(name)

    async def _make_socket(self, nsp: Namespace, client: Client,
                           auth: dict[str, Any]) -> tuple[Socket, RestoredSession | None] | None:
        """Restore a recoverable session or build a new socket, then run the middleware."""
        recovery = self.options.recovery
        socket: Socket | None = None
        restored: RestoredSession | None = None
        pid, offset = auth.get("pid"), auth.get("offset")
        if recovery is not None and isinstance(pid, str) and isinstance(offset, str):
            restored = await nsp.adapter.restore_session(pid, offset)
            if self.engine.metrics is not None:
                self.engine.metrics.recoveries["hit" if restored is not None else "miss"] += 1
            if restored is not None:
                socket = Socket(self.socket_context, nsp, client, auth, sid=restored.sid, pid=restored.pid)
                socket.restore(restored)
        if socket is None:
            socket = Socket(self.socket_context, nsp, client, auth)
        if not (socket.recovered and recovery is not None and recovery.skip_middlewares):
            try:
                for middleware in nsp.middlewares:
                    await middleware(socket, auth)
                    if client.closed:
                        break
            except ConnectRefused as exc:
                if self.engine.metrics is not None:
                    self.engine.metrics.connect_refusals[nsp.name, "middleware"] += 1
                if not client.closed:
                    client.send_packet(SocketPacket(SocketPacketType.CONNECT_ERROR, nsp.name, exc.payload()))
                await self._give_back(nsp, restored)
                return None
        if client.closed:
            await self._give_back(nsp, restored)
            return None
        return socket, restored

    @staticmethod
    async def _give_back(nsp: Namespace, restored: RestoredSession | None) -> None:
        """A claimed session whose connect did not finish is saved again for the next attempt.

        Claiming takes the record (so no two connections restore one session); a connection
        that then closes during the middleware (its client gave up, its node is draining)
        would otherwise cost the client's next attempt its recovery.
        """
        if restored is not None:
            await nsp.adapter.persist_session(SessionRecord(restored.sid, restored.pid, restored.rooms,
                                                            dict(restored.data)))
