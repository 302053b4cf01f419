"""A namespace: its middleware, its event handlers and its connected sockets."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from coup.core.adapter import Adapter, BroadcastOptions
from coup.core.broadcast import BroadcastOperator

if TYPE_CHECKING:
    from coup.core.server import SocketServer
    from coup.core.socket import Socket

log = logging.getLogger(__name__)

#: ``handler(socket, args) -> ack value``: the one handler signature. `args` is the list of
#: arguments after the event name; the return value (None, a value, or a tuple of values)
#: becomes the acknowledgement when the client asked for one. Plain or async functions.
EventHandler = Callable[["Socket", list[Any]], Any]
#: ``middleware(socket, auth)``: raise `ConnectRefused` to refuse the connection
Middleware = Callable[["Socket", dict[str, Any]], Awaitable[None]]
ConnectHandler = Callable[["Socket"], Awaitable[None]]
DisconnectHandler = Callable[["Socket", str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Handler:
    fn: EventHandler
    is_async: bool
    #: None for the fallback handler, which receives the event name as its first argument
    event: str | None


class Namespace:
    def __init__(self, server: SocketServer, name: str) -> None:
        self.server = server
        self.name = name
        self.sockets: dict[str, Socket] = {}
        self.middlewares: list[Middleware] = []
        self.handlers: dict[Any, Handler] = {}
        self.fallback: Handler | None = None
        self.connect_handlers: list[ConnectHandler] = []
        self.disconnect_handlers: list[DisconnectHandler] = []
        self.adapter: Adapter = server.adapter_factory(self)
        self._ack_ids = 0

    def __repr__(self) -> str:
        return f"<Namespace {self.name} sockets={len(self.sockets)}>"

    # ------------------------------------------------------------------ registration

    def use(self, middleware: Middleware) -> Middleware:
        """Add connection middleware (runs in order before a socket is connected)."""
        self.middlewares.append(middleware)
        return middleware

    def on(self, event: str, handler: EventHandler | None = None) -> Any:
        """Register the handler of `event`; usable as ``nsp.on("x", fn)`` or ``@nsp.on("x")``."""
        def register(fn: EventHandler) -> EventHandler:
            self.handlers[event] = Handler(fn, inspect.iscoroutinefunction(fn), event)
            return fn
        return register(handler) if handler is not None else register

    def on_unhandled(self, handler: EventHandler) -> EventHandler:
        """Handler for events nobody registered; it gets ``[event, *args]``."""
        self.fallback = Handler(handler, inspect.iscoroutinefunction(handler), None)
        return handler

    def on_connect(self, handler: ConnectHandler) -> ConnectHandler:
        self.connect_handlers.append(handler)
        return handler

    def on_disconnect(self, handler: DisconnectHandler) -> DisconnectHandler:
        """Runs after the socket left its rooms (`socket.rooms` still tells which they were)."""
        self.disconnect_handlers.append(handler)
        return handler

    def handler_for(self, event: Any) -> Handler | None:
        return self.handlers.get(event) or self.fallback

    # ------------------------------------------------------------------ sockets

    def next_ack_id(self) -> int:
        """Ack ids are per namespace, so one encoded broadcast can carry one id for all."""
        self._ack_ids += 1
        return self._ack_ids

    def add(self, socket: Socket) -> None:
        self.sockets[socket.id] = socket

    def remove(self, socket: Socket) -> None:
        if self.sockets.get(socket.id) is socket:
            del self.sockets[socket.id]

    async def run_connect_handlers(self, socket: Socket) -> None:
        for handler in self.connect_handlers:
            try:
                await handler(socket)
            except Exception:
                log.exception("connect handler failed for socket %s", socket.id)

    async def run_disconnect_handlers(self, socket: Socket, reason: str) -> None:
        for handler in self.disconnect_handlers:
            try:
                await handler(socket, reason)
            except Exception:
                log.exception("disconnect handler failed for socket %s", socket.id)

    # ------------------------------------------------------------------ broadcasting

    def to(self, *rooms: str) -> BroadcastOperator:
        # the same operator as ``BroadcastOperator(self).to(*rooms)``, built in one step (hot path)
        return BroadcastOperator(self, BroadcastOptions(rooms=frozenset(rooms)))

    in_ = to

    def except_(self, *rooms: str) -> BroadcastOperator:
        return BroadcastOperator(self).except_(*rooms)

    @property
    def local(self) -> BroadcastOperator:
        return BroadcastOperator(self, BroadcastOptions(local=True))

    def emit(self, event: str, *args: Any) -> None:
        """Send to every socket of the namespace."""
        BroadcastOperator(self).emit(event, *args)

    async def fetch_sockets(self) -> list[Any]:
        return await BroadcastOperator(self).fetch_sockets()
