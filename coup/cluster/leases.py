"""Room leases: a room is owned by the node that first needed it, not by the ring (issue 18.3).

With the ring's owner, a message in a room of two members on random nodes of N costs one
push per node with a member plus the call to the owner when the sender's node is not it:
3 - 2/N pushes (2.33 on three nodes). Owned where a member is, the call is needed only when
the members are on two nodes and the other one sends: 5/3 + 1/3 = 2.0.

A lease is a Redis key ``P:lease:ROOM`` holding a node id, set by the first node that calls
a command of the room (``SET NX``) and kept alive by its holder while it runs the room's
commands. Every node resolves a room's owner the same way from what it knows:

- the holder, while it is on the ring and not draining;
- while the holder drains (after it let its running commands finish and before it leaves),
  the node that needs the room: the first to run a command takes the lease over (a
  compare-and-set on the holder it saw), the others find the lease taken and are sent on, so
  the room stays with a member's node through a rolling restart;
- otherwise (the holder died or left) the ring's owner, as without leases: the successor on
  the ring without it, the one every node picks from the same lease and ring; it takes the
  lease over (the same compare-and-set) at its first command of the room.

So a dead holder's rooms go exactly the way of a ring owner's today (the successor, fences),
and a draining one's keep the drain's hold (no command of them runs while it runs one). A
lease is never taken from a holder that is live and not draining: a holder whose lease
expired (no command for 3/4 of `LEASE_TTL`) checks it before its next command and answers
"moved" when another node took the room meanwhile. Without Redis the ring decides, as before.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

import redis.asyncio as redis
from redis.exceptions import RedisError

from coup.cluster.options import ClusterOptions
from coup.cluster.ring import Ring

#: a lease lives this long after its holder last ran a command of the room
LEASE_TTL = 600.0
#: a holder renews its lease when it is older than this (so at least 3/4 of the TTL is left)
RENEW_AFTER = LEASE_TTL / 4
#: rooms whose holder a node remembers; past that it asks Redis again
_HOLDERS_KEPT = 100_000

# KEYS: lease; ARGV: node id ('' = only read), ttl ms -> the holder (false when none)
CLAIM = """
local holder = redis.call('GET', KEYS[1])
if holder or ARGV[1] == '' then return holder end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ARGV[1]
"""

# KEYS: lease; ARGV: node id, the holder it replaces ('' = none), ttl ms -> the holder now
HOLD = """
local holder = redis.call('GET', KEYS[1])
if not holder or holder == ARGV[1] or holder == ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
  return ARGV[1]
end
return holder
"""


class Leases:
    """This node's view of room leases; `owner` resolves a room's owner from it and a ring."""

    def __init__(self, client: redis.Redis, node_id: str, options: ClusterOptions, ring: Callable[[], Ring],
                 draining: Callable[[], bool]) -> None:
        """`ring()`: this node's current ring; `draining()`: this node hands its rooms over."""
        self.node_id = node_id
        self.options = options
        self._ring = ring
        self._draining = draining
        self._claim = client.register_script(CLAIM)
        self._hold = client.register_script(HOLD)
        #: room -> its holder, as last read or set
        self._holders: dict[str, str] = {}
        #: rooms we hold -> when we last renewed the lease (monotonic)
        self._renewed: dict[str, float] = {}
        #: rooms we hold -> a number new each time we came to hold it (`tenure`)
        self._tenures: dict[str, int] = {}
        self._tenure_numbers = itertools.count(1)
        self.stats = {"claimed": 0, "taken_over": 0, "lost": 0}

    def _key(self, room: str) -> str:
        return self.options.spread("lease", room)

    def known(self, room: str) -> bool:
        return room in self._holders

    def holds(self, room: str) -> bool:
        """We hold the room's lease, as far as we know."""
        return self._holders.get(room) == self.node_id

    def live_holder(self, room: str, without: frozenset[str] = frozenset(), ring: Ring | None = None) -> str | None:
        """The room's holder as far as we know, while it is on `ring` (ours by default), not
        draining and not one of `without`; else None."""
        ring = ring if ring is not None else self._ring()
        holder = self._holders.get(room)
        if holder is not None and holder in ring.nodes and holder not in ring.draining and holder not in without:
            return holder
        return None

    def owner(self, room: str, without: frozenset[str] = frozenset(), ring: Ring | None = None) -> str:
        """The room's owner on `ring` (ours by default) once `without` are gone: its holder
        while that one is live and not draining; we, when it drains (the first node to run a
        command takes the lease over, `hold`, and the others are sent to it); else the ring's
        owner (a holder that died or left: the successor every node agrees on)."""
        ring = ring if ring is not None else self._ring()
        holder = self.live_holder(room, without, ring)
        if holder is not None:
            return holder
        holder = self._holders.get(room)
        me = self.node_id
        if holder is not None and holder in ring.draining and holder not in without and me not in without \
                and me in ring.nodes and me not in ring.draining:
            return me
        if without:
            ring = ring.without(without)
        return ring.owner(room) or self.node_id

    async def claim(self, room: str, *, read_only: bool = False) -> None:
        """Learn the room's holder; take the lease when there is none (unless `read_only` or we drain)."""
        me = "" if read_only or self._draining() else self.node_id
        try:
            holder = await self._claim(keys=[self._key(room)], args=[me, int(LEASE_TTL * 1000)])
        except RedisError:
            return  # the ring decides until Redis answers
        if holder is None:
            return
        holder = holder.decode() if isinstance(holder, bytes) else str(holder)
        if holder == self.node_id:
            self.stats["claimed"] += 1  # `hold` renews it before the first command (it may be an old lease of ours)
        self._remember(room, holder)

    async def hold(self, room: str) -> bool:
        """Before we run a command as the room's owner: make sure the lease is ours (renew it,
        or take it over from the holder we saw go). False when another node holds it."""
        now = time.monotonic()
        renewed = self._renewed.get(room)
        if renewed is not None and now - renewed < RENEW_AFTER:
            return True
        seen = self._holders.get(room, "")
        try:
            holder = await self._hold(keys=[self._key(room)], args=[self.node_id, seen, int(LEASE_TTL * 1000)])
        except RedisError:
            return True  # as without leases: the owner on our ring runs it
        holder = holder.decode() if isinstance(holder, bytes) else str(holder)
        self._remember(room, holder)
        if holder != self.node_id:
            self.stats["lost"] += 1
            self._renewed.pop(room, None)
            return False
        if seen != self.node_id:
            self.stats["taken_over"] += 1
        self._renewed[room] = now
        return True

    def tenure(self, room: str) -> int:
        """A number that stays the same while we hold the room's lease without a break. What
        we keep about a room we own (the users in it) holds only within one tenure: between
        two, another node ran its commands. A room we do not know we hold: a number never
        given before, so nothing kept matches it."""
        tenure = self._tenures.get(room)
        return tenure if tenure is not None else next(self._tenure_numbers)

    def forget(self, room: str) -> None:
        """The room's holder may have changed (its owner answered "moved"): ask Redis again."""
        self._holders.pop(room, None)
        self._renewed.pop(room, None)
        self._tenures.pop(room, None)

    def forget_holders(self, nodes: set[str]) -> None:
        """`nodes` left the ring: what we remember of their leases may be old when they come back
        (their rooms' leases go to the ring's owners meanwhile)."""
        if nodes:
            for room in [r for r, holder in self._holders.items() if holder in nodes]:
                self.forget(room)

    def forget_all(self) -> None:
        """Redis came back (maybe without its data): every lease is checked again."""
        self._holders.clear()
        self._renewed.clear()
        self._tenures.clear()

    def _remember(self, room: str, holder: str) -> None:
        if len(self._holders) >= _HOLDERS_KEPT:
            self.forget_all()
        self._holders[room] = holder
        if holder != self.node_id:
            self._tenures.pop(room, None)
        elif room not in self._tenures:
            self._tenures[room] = next(self._tenure_numbers)
