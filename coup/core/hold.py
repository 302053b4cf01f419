"""What is sent to a socket while it connects, held until its CONNECT reply is out.

A socket exists before its client knows it is connected: the connection middleware runs (a
token check, a database read), then the socket joins its rooms, which in a cluster awaits a
Redis subscription. Whatever is sent to it meanwhile (a room broadcast, a remote broadcast
heard while the subscription completes, an emit with an ack) must neither be lost nor reach
the client before the ``40{"sid":...}`` reply: clients drop such packets, or play them
before a recovered session's replay. So every socket starts with a `HeldPackets` as its
`sink`; the connect flow sends the CONNECT reply, then `release`s the held packets into
the session and points the sink at the session. Connected sockets never pass through here:
the broadcast loop calls ``socket.sink.send`` either way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Protocol

from coup.protocol.socketio import EncodedPacket, stamp_offset
from coup.protocol.wire import Outbound

if TYPE_CHECKING:
    from coup.engine.session import Session

log = logging.getLogger(__name__)


class PacketSink(Protocol):
    """Where a socket's packets go: its Engine.IO session, or a `HeldPackets`."""

    def send(self, out: Outbound) -> None: ...


class Stamped(Outbound):
    """A logged broadcast whose offset is a vector (one offset per recovery log group; see
    docs/cluster.md#redis-cluster, "Log groups"): it names its log entry, (group, offset),
    because its text differs between the live copy and a replayed one (their stamps do)."""

    __slots__ = ("entry", "source", "vector")

    def __init__(self, packet: EncodedPacket, entry: tuple[int, int], vector: tuple[int, ...],
                 stamp: str | None = None) -> None:
        """`stamp`: `vector` as text when the caller has it (the live path builds it once per push)."""
        text = stamp if stamp is not None else ".".join(map(str, vector))
        super().__init__("4" + stamp_offset(packet.text, text), packet.attachments)
        self.source = packet
        self.entry = entry
        self.vector = vector

    def at_least(self, floor: tuple[int, ...]) -> Stamped:
        """This packet stamped with the componentwise maximum of its vector and `floor`
        (itself when that changes nothing): what a client that holds `floor` may be given."""
        vector = self.vector
        if len(floor) != len(vector) or all(v >= f for v, f in zip(vector, floor, strict=True)):
            return self
        return Stamped(self.source, self.entry, tuple(max(v, f) for v, f in zip(vector, floor, strict=True)))


def _highest(vector: tuple[int, ...] | None, other: tuple[int, ...]) -> tuple[int, ...]:
    if vector is None or len(vector) != len(other):
        return other
    return tuple(max(v, o) for v, o in zip(vector, other, strict=True))


class HeldPackets:
    """Packets for one connecting socket, in the order they were sent, bounded in bytes."""

    __slots__ = ("limit", "overflowed", "packets", "session", "size")

    def __init__(self, session: Session, limit: int) -> None:
        self.session = session
        #: bytes that may wait here: what a session may queue before it counts as a slow consumer
        self.limit = limit
        self.packets: list[Outbound] = []
        self.size = 0
        self.overflowed = False

    def send(self, out: Outbound) -> None:
        if self.overflowed:
            return
        self.size += out.size
        if self.size > self.limit:
            # as a slow consumer: this connection closes, nobody else is held up
            log.warning("session %s: %d bytes sent to a socket still connecting; closing", self.session.sid,
                        self.size)
            self.overflowed = True
            metrics = self.session.server.metrics
            if metrics is not None:
                metrics.slow_consumer("connecting")
                metrics.dropped("connecting", len(self.packets) + 1)
            self.packets.clear()
            asyncio.get_running_loop().call_soon(partial(self.session.close, "transport error", graceful=False))
            return
        self.packets.append(out)

    def release(self, missed: Sequence[Outbound] = (), floor: tuple[int, ...] | None = None) -> None:
        """Send a recovered client's `missed` packets, then the held ones: each once, in order.

        `missed` is everything stored after the client's offset up to now, so its tail is the
        stored packets that were also delivered here while the socket connected (their texts
        end with their unique offsets; with log groups they are `Stamped` and name their entry).
        Those go out at their place among the held packets, between the unstored ones (acks,
        events with an ack id) sent around them.

        With log groups a held packet's vector may be below what the client holds by then (the
        last replayed packet's, or `floor`: the last stamp a session's old node gave it): such
        a packet goes out stamped with the maximum of both, never lower (a lower stamp would
        make the next restore replay what the client has)."""
        session = self.session
        held = self.packets
        if missed and held:
            entries = {out.entry for out in missed if isinstance(out, Stamped)}
            if entries:
                held = [out for out in held if not (isinstance(out, Stamped) and out.entry in entries)]
            else:
                texts = {out.text for out in held}
                missed = [out for out in missed if out.text not in texts]
        known = floor
        for out in missed:
            if isinstance(out, Stamped):
                known = _highest(known, out.vector)
            session.send(out)
        for out in held:
            if known is not None and isinstance(out, Stamped):
                out = out.at_least(known)
                known = out.vector
            session.send(out)
        self.packets = []
