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


class OriginVector:
    """A recovery offset over the origins of a node-sequenced log (`coup.cluster.origin_log`):
    per origin, the last number of it handled; `epoch` names the logs the numbers are of (a
    Redis that lost them starts a new epoch, and an offset of the old one reads as gone).
    Text: ``EPOCH~ORIGIN-NUMBER~...``; an origin it does not name counts as 0."""

    __slots__ = ("counts", "epoch", "text")

    def __init__(self, epoch: str, counts: dict[int, int]) -> None:
        """`counts` is not changed afterwards (a vector is a value)."""
        self.epoch = epoch
        self.counts = counts
        self.text = epoch + "".join([f"~{origin}-{number}" for origin, number in sorted(counts.items())])

    @classmethod
    def parse(cls, text: str) -> OriginVector | None:
        epoch, *parts = text.split("~")
        counts: dict[int, int] = {}
        for part in parts:
            origin, dash, number = part.partition("-")
            if not (dash and origin.isdigit() and number.isdigit()):
                return None
            counts[int(origin)] = int(number)
        return cls(epoch, counts) if epoch.isalnum() else None

    def highest(self, other: OriginVector) -> OriginVector:
        """The componentwise maximum; of two epochs, the newer one's vector (the old logs are gone)."""
        if other.epoch != self.epoch:
            return other if _epoch_order(other.epoch) > _epoch_order(self.epoch) else self
        counts = self.counts
        if all(counts.get(origin, 0) >= number for origin, number in other.counts.items()):
            return self
        merged = dict(counts)
        for origin, number in other.counts.items():
            if number > merged.get(origin, 0):
                merged[origin] = number
        return OriginVector(self.epoch, merged)


def _epoch_order(epoch: str) -> int:
    """Epochs are made from a clock (base 36): a later one is larger."""
    return int(epoch, 36) if epoch else -1


#: a vector offset: one per recovery log group (positional), or over origins
Vector = tuple[int, ...] | OriginVector
#: the log entry a `Stamped` packet is: (group, offset) or (origin, number)
Entry = tuple[int, int]


def highest(vector: Vector | None, other: Vector) -> Vector:
    """The componentwise maximum of two vectors of one kind (`other` when they do not compare)."""
    if isinstance(vector, OriginVector):
        return vector.highest(other) if isinstance(other, OriginVector) else other
    if vector is None or isinstance(other, OriginVector) or len(vector) != len(other):
        return other
    if all(v >= o for v, o in zip(vector, other, strict=True)):
        return vector
    return tuple(max(v, o) for v, o in zip(vector, other, strict=True))


class Stamped(Outbound):
    """A logged broadcast whose offset is a vector (one offset per recovery log group, see
    docs/cluster.md#redis-cluster, "Log groups"; or over the origins of a node-sequenced log):
    it names its log entry, because its text differs between the live copy and a replayed one
    (their stamps do)."""

    __slots__ = ("_stamp", "_vector", "entry", "source")

    def __init__(self, packet: EncodedPacket, entry: Entry, vector: Vector | None, stamp: str | None = None) -> None:
        """`stamp`: `vector` as text when the caller has it (the live path builds it once per
        push); with `vector` None, an `OriginVector`'s text, read only if `vector` is asked for
        (a restore or a move: not on the live path)."""
        if stamp is None:
            assert vector is not None
            stamp = vector.text if isinstance(vector, OriginVector) else ".".join(map(str, vector))
        Outbound.__init__(self, "4" + stamp_offset(packet.text, stamp), packet.attachments)
        self.source = packet
        self.entry = entry
        self._vector = vector
        self._stamp = stamp

    @property
    def vector(self) -> Vector:
        if self._vector is None:
            self._vector = OriginVector.parse(self._stamp) or OriginVector("", {})
        return self._vector

    def at_least(self, floor: Vector) -> Stamped:
        """This packet stamped with the componentwise maximum of its vector and `floor`
        (itself when that changes nothing): what a client that holds `floor` may be given."""
        vector = self.vector
        raised = highest(vector, floor) if isinstance(floor, type(vector)) else vector
        return self if raised is vector else Stamped(self.source, self.entry, raised)


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

    def release(self, missed: Sequence[Outbound] = (), floor: Vector | None = None) -> None:
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
                known = highest(known, out.vector)
            session.send(out)
        for out in held:
            if known is not None and isinstance(out, Stamped):
                out = out.at_least(known)
                known = out.vector
            session.send(out)
        self.packets = []
