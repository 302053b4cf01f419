"""Room commands run on the room's owner node (its single writer), wherever the caller is.

`call(room, name, payload)` looks the owner up: the holder of the room's lease
(`coup.cluster.leases`; the first node that needed the room), or, when that one is gone or
leases are off, the owner on this node's ring. Ours: run here,
serialised per room. Another node's: publish the command to its inbox and wait for its
reply. Correctness never depends on the nodes agreeing on the owner:

- a node runs every command it is sent, even for a room it no longer thinks it owns;
- when the owner's inbox has no listener (it died, or is reconnecting to Redis) PUBLISH
  says so at once and the caller sends the command to the room's owner on the ring without
  that node: the owner every node will agree on once the dead node is reaped. Every caller
  picks the same one, so a crashed owner's rooms keep one writer (when each caller ran such
  a command itself, every node wrote the room at once until the reap, and its clients got
  `seq` out of order); when Redis itself is unreachable, the caller runs it;
- so during a ring change two nodes may run commands of one room at the same time, and the
  commands stay right because their state is atomic in Redis or the database (per-room
  sequence script, message ids, clientMessageId idempotency);
- a command whose owner does not answer in `call_timeout` fails with the retryable error
  ``UNAVAILABLE``: it may or may not have run, and the client retries with the same
  idempotency key (never the server, blindly).

A draining node hands its rooms over without two writers at once (which would deliver a
room's messages out of `seq` order): it holds the commands that arrive for it, lets the ones
it runs finish, takes itself off the ring, then answers the held ones "moved" and their
callers send them to the new owner (`begin_handover` / `end_handover`).

A room that moves for any other reason (a node joined, or one came back) is taken over with
a fence: after each ring change, before an owner runs its first command of a room, it asks
the room's previous owner (on the old ring, and on the ring without itself) to stop taking
that room's commands (it re-reads the ring, answers "moved" from then on) and to finish the
ones it runs. Callers whose ring is older reach the old owner, hear "moved" and follow. When
the nodes' rings disagree for a moment, two writers remain possible, as before.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from coup.cluster.adapter import ClusterTimeout
from coup.cluster.bus import Bus
from coup.cluster.leases import Leases
from coup.cluster.options import ClusterOptions
from coup.cluster.resp import RedisUnavailable
from coup.cluster.ring import Ring
from coup.core.errors import INTERNAL_ERROR, ClientError
from coup.core.rooms import LocalRoomRouter, RoomCommand, UnknownCommand
from coup.protocol import jsonutil

log = logging.getLogger(__name__)

#: times a caller follows a "moved" answer to a room's new owner
MOVED_FOLLOWS = 3

UNAVAILABLE = ClientError("UNAVAILABLE", "The room is moving to another server; please retry",
                          {"retryable": True})


#: a room's owner answered that it handed the room over
_MOVED = object()
#: nobody listens on the owner's inbox (it died, or its link to Redis is down)
_UNHEARD = object()
#: the command a new owner sends the previous one (see the module's docstring)
FENCE = "room.fence"


class OwnerOf(Protocol):
    """The owner of a room on this node's ring (`coup.cluster.registry.Registry.owner`);
    `without`: on the ring as it will be once those nodes are gone."""

    def __call__(self, room: str, /, without: frozenset[str] = ...) -> str: ...


class OwnerRequester(Protocol):
    """A request to one node's inbox (`coup.cluster.node.Cluster.request`)."""

    async def __call__(self, channel: bytes, message: dict[str, Any], timeout: float, *,
                       first_only: bool = ..., target: str | None = ...) -> list[Any]: ...


class RedisRoomRouter:
    """`coup.core.rooms.RoomRouter` across nodes; the commands run in a `LocalRoomRouter`."""

    def __init__(self, node_id: str, *, options: ClusterOptions, bus: Bus, owner: OwnerOf,
                 request: OwnerRequester, inbox: Callable[[str], bytes],
                 room_channel: Callable[[str], bytes | None], refresh: Callable[[], Awaitable[None]],
                 leases: Leases | None = None) -> None:
        """`owner(room)`: the owner on this node's ring; `inbox(node)`: a node's channel;
        `room_channel(room)`: the channel a member of `room` here hears it on, if any;
        `refresh()`: re-read the ring (an owner answered that it handed the room over);
        `leases`: rooms are owned by their lease's holder, the ring deciding only for a room
        whose holder is gone (`coup.cluster.leases`); without, by the ring alone."""
        self.node_id = node_id
        self.leases = leases
        self.options = options
        self.bus = bus
        self.owner = owner
        self._request = request
        self._inbox = inbox
        self._room_channel = room_channel
        self.local = LocalRoomRouter(node_id)
        self._refresh = refresh
        self.stats = {"local": 0, "remote": 0, "fallback": 0, "served": 0, "timeout": 0, "moved": 0}
        #: ring changes seen (`coup.core.RoomRouter.moves`)
        self.moves = 0
        #: set while this draining node hands its rooms over; done when the others own them
        self._handover: asyncio.Event | None = None
        #: the ring before the last change (who owned a room until then)
        self._previous: Ring | None = None
        #: rooms whose previous owners were fenced since the last ring change
        self._settled: set[str] = set()
        self._settling: dict[str, asyncio.Future[None]] = {}
        #: rooms another node took over from us (fenced), by their new owner: we answer "moved"
        self._fenced: dict[str, str] = {}

    def register(self, name: str, command: RoomCommand) -> None:
        self.local.register(name, command)

    async def run_locally(self, room: str, name: str, payload: dict[str, Any]) -> Any:
        return await self.local.run_locally(room, name, payload)

    async def finish(self, timeout: float) -> bool:
        """Wait (at most `timeout` s) until no command runs here; True when none is left."""
        return await self.local.finish(timeout)

    def begin_handover(self) -> None:
        """Hold every command that would run here from now on (see the module's docstring)."""
        self._handover = asyncio.Event()

    def ring_changed(self, old: Ring, new: Ring) -> None:
        """Rooms we own on the new ring are fenced again at their next command."""
        self.moves += 1
        self._previous = old
        self._settled.clear()
        self._fenced = {room: node for room, node in self._fenced.items() if self._owner_on(new, room) == node}
        if self.leases is not None:
            self.leases.forget_holders(set(old.nodes) - set(new.nodes))

    def _owner(self, room: str, without: frozenset[str] = frozenset()) -> str:
        """The room's owner as this node sees it now (its lease's holder, or the ring's)."""
        if self.leases is not None:
            return self.leases.owner(room, without)
        return self.owner(room, without)

    def _owner_on(self, ring: Ring, room: str) -> str:
        """The room's owner on `ring` (another view than this node's current one)."""
        if self.leases is not None:
            return self.leases.owner(room, ring=ring)
        return ring.owner(room) or self.node_id

    def tenure(self, room: str) -> int:
        """`coup.core.rooms.RoomRouter.tenure`: a room's lease may go to another node and come
        back with no ring change; by the ring alone, only `moves` says that."""
        return self.leases.tenure(room) if self.leases is not None else 0

    async def current_owner(self, room: str) -> str:
        """Who runs `room`'s commands now, as this node sees it (reads its lease, takes none)."""
        await self._learn_holder(room, claim=False)
        return self._owner(room)

    async def _learn_holder(self, room: str, *, claim: bool = True) -> None:
        """Read the room's lease if we do not know it (and take it when nobody holds it, if `claim`)."""
        if self.leases is not None and not self.leases.known(room):
            await self.leases.claim(room, read_only=not claim)

    async def _run_as_owner(self, room: str, name: str, payload: dict[str, Any]) -> Any:
        """Run a command of a room we own; `_MOVED` when its lease turned out to be another node's."""
        if room not in self._settled:  # before `hold`: the fence goes to the holder we saw go
            await self._settle(room)
        if self.leases is not None and not await self.leases.hold(room):
            return _MOVED
        return await self.run_locally(room, name, payload)

    async def _settle(self, room: str) -> None:
        """Fence the room's previous owners once (concurrent callers wait for the same fence).
        Outside the room's lock: two nodes fencing each other must not wait on each other."""
        pending = self._settling.get(room)
        if pending is None:
            pending = self._settling[room] = asyncio.ensure_future(self._fence(room))
            pending.add_done_callback(lambda _: self._settling.pop(room, None))
        await asyncio.shield(pending)

    async def _fence(self, room: str) -> None:
        previous = {self._owner(room, frozenset((self.node_id,)))}
        if self._previous is not None:
            previous.add(self._owner_on(self._previous, room))
        previous.discard(self.node_id)
        message = {"t": "call", "room": room, "name": FENCE, "p": {}}
        for node in sorted(previous):
            try:
                await self._request(self._inbox(node), message, self.options.call_timeout, first_only=True,
                                    target=node)
            except (ClusterTimeout, RedisUnavailable):  # gone, or unreachable: it runs nothing of ours
                log.info("room %s: previous owner %s did not answer the fence", room, node)
        self._settled.add(room)

    async def _serve_fence(self, room: str) -> dict[str, Any]:
        """Another node took `room` over: stop taking its commands, finish the running ones."""
        await self._refresh()  # the new owner may have joined after our last look at the ring
        if self.leases is not None:  # and the room's lease may have changed hands
            self.leases.forget(room)
            await self._learn_holder(room, claim=False)
        owner = self._owner(room)
        if owner != self.node_id:
            self._fenced[room] = owner
        if not await self.local.room_idle(room, self.options.call_timeout):
            log.warning("room %s: commands still running here when %s took it over", room, owner)
        return {"ok": True, "result": None}

    def end_handover(self) -> None:
        """The others own our rooms: held and later commands go to them."""
        if self._handover is not None:
            self._handover.set()

    async def call(self, room: str, name: str, payload: dict[str, Any]) -> Any:
        if name not in self.local.commands:
            raise UnknownCommand(name)
        unheard: frozenset[str] = frozenset()  # owners asked that nobody listens for
        moved = 0
        while True:  # each turn either returns, or adds a node to `unheard` or to `moved`
            await self._learn_holder(room)
            owner = self._owner(room, unheard)
            if owner == self.node_id and self._handover is not None:
                await self._handover.wait()  # then our ring no longer makes us the owner
                owner = self._owner(room, unheard)
            if owner == self.node_id:
                reply = await self._run_as_owner(room, name, payload)
                if reply is not _MOVED:
                    self.stats["local"] += 1
                    return reply
            else:
                reply = await self._call_remote(owner, room, name, payload, unheard)
                if reply is _UNHEARD:
                    self.stats["fallback"] += 1
                    unheard |= {owner}
                    continue
                if reply is not _MOVED:
                    return reply
            self.stats["moved"] += 1
            moved += 1
            if moved >= MOVED_FOLLOWS:
                raise UNAVAILABLE
            if self.leases is not None:  # its lease may have changed hands: read it again
                self.leases.forget(room)
            await self._refresh()  # the owner asked is draining: learn who took over

    async def _call_remote(self, owner: str, room: str, name: str, payload: dict[str, Any],
                           unheard: frozenset[str] = frozenset()) -> Any:
        message: dict[str, Any] = {"t": "call", "room": room, "name": name, "p": payload}
        if unheard:  # the node asked is their successor (it may have been fenced by one of them)
            message["unheard"] = sorted(unheard)
        # When we hear the room (a member of it is here: the usual caller), the owner answers
        # on the room's channel: its broadcast and the answer then travel in one PUBLISH.
        room_channel = self._room_channel(room)
        if room_channel is not None and self.bus.subscribed(room_channel):
            message["via"] = "/"
            await self.bus.acquire([room_channel])  # keep hearing it until the answer came
        else:
            room_channel = None
        try:
            responses = await self._request(self._inbox(owner), message, self.options.call_timeout,
                                            first_only=True, target=owner)
        except ClusterTimeout:
            self.stats["timeout"] += 1
            log.warning("room command %s for %s: owner %s did not answer", name, room, owner)
            raise UNAVAILABLE from None
        except RedisUnavailable:
            responses = None
        finally:
            if room_channel is not None:
                self.bus.release([room_channel])
        if responses is None:  # no node can be asked: do it ourselves
            self.stats["fallback"] += 1
            return await self.run_locally(room, name, payload)
        if not responses:
            return _UNHEARD
        self.stats["remote"] += 1
        reply = responses[0]
        if reply.get("moved"):
            return _MOVED
        if reply.get("ok"):
            return reply.get("result")
        error = reply.get("error") or {}
        raise ClientError(str(error.get("code", "INTERNAL")), str(error.get("message", "")), error.get("data"))

    async def _held_elsewhere(self, room: str, unheard: frozenset[str]) -> bool:
        """A live node other than us holds the room's lease (a caller that remembers an older
        holder, us before we restarted, reads it again). Our ring is re-read first: it may be
        behind the caller's (a holder that began to drain, whose rooms are the ring's now)."""
        if self.leases is None or self.leases.live_holder(room, unheard) in (None, self.node_id):
            return False
        await self._refresh()
        return self.leases.live_holder(room, unheard) not in (None, self.node_id)

    async def serve(self, message: dict[str, Any]) -> dict[str, Any]:
        """Run a command another node routed to us and say how it went."""
        self.stats["served"] += 1
        room = str(message["room"])
        if message.get("name") == FENCE:
            return await self._serve_fence(room)
        if self._handover is not None:  # draining: the new owner runs it (after ours finished)
            await self._handover.wait()
            return {"ok": False, "moved": True}
        await self._learn_holder(room)
        fenced = self._fenced.get(room)
        if fenced is not None:
            if self.leases is not None and self.leases.holds(room):
                del self._fenced[room]  # fenced while the room was another's; we took its lease since
            elif fenced not in message.get("unheard", ()):  # taken over: the caller's ring is older than ours
                return {"ok": False, "moved": True}
            else:
                del self._fenced[room]  # the node that took it over died: we are its successor
        try:
            if await self._held_elsewhere(room, frozenset(message.get("unheard", ()))):
                return {"ok": False, "moved": True}
            if self._owner(room) == self.node_id:
                result = await self._run_as_owner(room, str(message["name"]), message.get("p") or {})
                if result is _MOVED:  # the room's lease is another node's: the caller asks it
                    return {"ok": False, "moved": True}
            else:  # the caller thinks we own it: run it anyway (correctness never needs agreement)
                result = await self.run_locally(room, str(message["name"]), message.get("p") or {})
            jsonutil.dumps(result)  # fail here, with a log, rather than in the reply
            return {"ok": True, "result": result}
        except ClientError as exc:
            return {"ok": False, "error": {"code": exc.code, "message": exc.message, "data": exc.data}}
        except UnknownCommand as exc:
            log.error("room command %s is not registered on this node", exc)
        except Exception:
            log.exception("room command %s for %s failed", message.get("name"), message.get("room"))
        return {"ok": False, "error": {"code": INTERNAL_ERROR.code, "message": INTERNAL_ERROR.message}}
