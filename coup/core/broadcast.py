"""`nsp.to("room").except_("other").emit(...)`: who receives, decided before encoding once."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from coup.core.adapter import BroadcastOptions, SocketInfo
from coup.protocol.socketio import SocketPacket, SocketPacketType

if TYPE_CHECKING:
    from coup.core.namespace import Namespace


def _rooms(rooms: Iterable[str] | str) -> frozenset[str]:
    return frozenset((rooms,)) if isinstance(rooms, str) else frozenset(rooms)


class BroadcastOperator:
    """An immutable selection of receivers; each method returns a new operator."""

    __slots__ = ("ack_timeout", "nsp", "opts")

    def __init__(self, nsp: Namespace, opts: BroadcastOptions | None = None,
                 ack_timeout: float | None = None) -> None:
        self.nsp = nsp
        self.opts = opts or BroadcastOptions()
        self.ack_timeout = ack_timeout

    def _with(self, **changes: Any) -> BroadcastOperator:
        opts = BroadcastOptions(
            rooms=changes.get("rooms", self.opts.rooms),
            exclude=changes.get("exclude", self.opts.exclude),
            local=changes.get("local", self.opts.local),
            once=changes.get("once", self.opts.once),
            first=changes.get("first", self.opts.first),
        )
        return BroadcastOperator(self.nsp, opts, changes.get("ack_timeout", self.ack_timeout))

    def to(self, *rooms: str) -> BroadcastOperator:
        return self._with(rooms=self.opts.rooms | _rooms(rooms))

    in_ = to

    def except_(self, *rooms: str) -> BroadcastOperator:
        return self._with(exclude=self.opts.exclude | _rooms(rooms))

    @property
    def local(self) -> BroadcastOperator:
        return self._with(local=True)

    def once(self, key: str, first: bool = False) -> BroadcastOperator:
        """Sent only if no broadcast with `key` was sent lately (`BroadcastOptions.once`);
        `first`: the caller knows none was (`BroadcastOptions.first`)."""
        return self._with(once=key, first=first)

    def timeout(self, seconds: float) -> BroadcastOperator:
        return self._with(ack_timeout=seconds)

    def emit(self, event: str, *args: Any) -> None:
        """Send to every selected socket (cluster-wide unless `local`); no acknowledgement."""
        packet = SocketPacket(SocketPacketType.EVENT, self.nsp.name, [event, *args])
        self.nsp.adapter.broadcast(packet, self.opts)

    async def emit_with_ack(self, event: str, *args: Any) -> list[Any]:
        """Send and wait for every receiver's acknowledgement (first argument of each).

        Raises `AckTimeout` (carrying the responses that did arrive) after the timeout.
        """
        packet = SocketPacket(SocketPacketType.EVENT, self.nsp.name, [event, *args])
        timeout = self.ack_timeout if self.ack_timeout is not None else self.nsp.server.default_ack_timeout
        return await self.nsp.adapter.broadcast_with_ack(packet, self.opts, timeout)

    async def fetch_sockets(self) -> list[SocketInfo]:
        return await self.nsp.adapter.fetch_sockets(self.opts)

    async def sockets_join(self, *rooms: str) -> None:
        await self.nsp.adapter.add_sockets(self.opts, rooms)

    async def sockets_leave(self, *rooms: str) -> None:
        await self.nsp.adapter.del_sockets(self.opts, rooms)

    async def disconnect_sockets(self, close: bool = False) -> None:
        await self.nsp.adapter.disconnect_sockets(self.opts, close)
