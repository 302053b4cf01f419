"""This node's broadcasts on their way through the recovery log, kept until Redis hands them back.

With the recovery log on, a node delivers its own broadcast to its own sockets only when Redis
pushes it back with its offset (`coup.cluster.recovery`), so they get it in offset order with
every other node's. That push is the envelope the node itself encoded a moment before:
decoding it again (its JSON header, its text) was the largest Python cost the log added on the
nodes (bench/README.md, "Recovery log on and off"). So the node keeps what it sent under the
number of its message id (``NODE:NUMBER``, unique per node: every namespace of the node draws
from one counter) and takes it back when the push arrives, reading only that number.

Bounded in entries and bytes, oldest forgotten first: a push that never comes back (a `once`
repeat the script did not publish, a call lost with its connection) leaks nothing, and one
that comes back after it was forgotten is decoded as before.
"""

from __future__ import annotations

import itertools
import secrets
from typing import Generic, TypeVar

from coup.cluster.envelope import origin_prefix
from coup.core.adapter import BroadcastOptions
from coup.protocol.socketio import EncodedPacket

_O = TypeVar("_O")

#: broadcasts kept at most (a push normally comes back within a Redis round trip)
KEPT_ENTRIES = 4096
#: their packets' bytes at most (large broadcasts are decoded again rather than held)
KEPT_BYTES = 8 * 1024 * 1024

#: what a kept broadcast is: (who sent it, its message id, its packet, to whom)
Kept = tuple[_O, str, EncodedPacket, BroadcastOptions]


class OwnBroadcasts(Generic[_O]):
    """Message ids for one node's broadcasts, and its logged broadcasts until they come back."""

    def __init__(self, node_id: str, max_entries: int = KEPT_ENTRIES, max_bytes: int = KEPT_BYTES) -> None:
        self.node_id = node_id
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        #: how this node's envelopes start (``B["NODE",``); the message id's string follows
        self._prefix = origin_prefix(node_id)
        #: from a random start: a process that comes back under the same node id while pushes of
        #: its predecessor are on their way must not take one of those for one of its own
        self._numbers = itertools.count(secrets.randbelow(1 << 32))
        #: number -> (kept broadcast, its bytes), oldest first
        self._kept: dict[int, tuple[Kept[_O], int]] = {}
        self._bytes = 0

    def next_mid(self) -> tuple[int, str]:
        """A new message id of this node, and its number (the key `keep` and `take` use)."""
        number = next(self._numbers)
        return number, f"{self.node_id}:{number}"

    def keep(self, number: int, sender: _O, mid: str, packet: EncodedPacket, opts: BroadcastOptions) -> None:
        size = len(packet.text)
        if packet.attachments:
            size += sum(len(a) for a in packet.attachments)
        if size > self.max_bytes // 16:
            return  # a large one is decoded again when it comes back rather than crowd out the rest
        kept = self._kept
        kept[number] = ((sender, mid, packet, opts), size)
        self._bytes += size
        while len(kept) > self.max_entries or self._bytes > self.max_bytes:
            self._bytes -= kept.pop(next(iter(kept)))[1]

    def take(self, envelope: bytes) -> Kept[_O] | None:
        """The broadcast `envelope` (as published) carries, if this node sent it and still
        keeps it; it is forgotten here (a multi-room broadcast's further copies are decoded,
        and dropped as repeats by their message id)."""
        prefix = self._prefix
        if not envelope.startswith(prefix):
            return None
        start = len(prefix) + 1  # past the opening quote of the message id
        end = envelope.find(b'"', start)
        colon = envelope.rfind(b":", start, end)
        if colon < 0:
            return None
        try:
            number = int(envelope[colon + 1:end])
        except ValueError:
            return None
        entry = self._kept.pop(number, None)
        if entry is None:
            return None
        self._bytes -= entry[1]
        return entry[0]

    def __len__(self) -> int:
        return len(self._kept)
