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

from coup.protocol.wire import Outbound

if TYPE_CHECKING:
    from coup.engine.session import Session

log = logging.getLogger(__name__)


class PacketSink(Protocol):
    """Where a socket's packets go: its Engine.IO session, or a `HeldPackets`."""

    def send(self, out: Outbound) -> None: ...


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

    def release(self, missed: Sequence[Outbound] = ()) -> None:
        """Send a recovered client's `missed` packets, then the held ones: each once, in order.

        `missed` is everything stored after the client's offset up to now, so its tail is the
        stored packets that were also delivered here while the socket connected (their texts
        end with their unique offsets). Those go out at their place among the held packets,
        between the unstored ones (acks, events with an ack id) sent around them.
        """
        session = self.session
        held = self.packets
        if missed and held:
            texts = {out.text for out in held}
            missed = [out for out in missed if out.text not in texts]
        for out in missed:
            session.send(out)
        for out in held:
            session.send(out)
        self.packets = []
