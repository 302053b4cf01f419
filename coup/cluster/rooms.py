"""Room commands run on the room's owner node (its single writer), wherever the caller is.

`call(room, name, payload)` looks the owner up on this node's ring. Ours: run here,
serialised per room. Another node's: publish the command to its inbox and wait for its
reply. Correctness never depends on the nodes agreeing on the owner:

- a node runs every command it is sent, even for a room it no longer thinks it owns;
- when the owner's inbox has no listener (it died, or is reconnecting to Redis) PUBLISH
  says so at once and the caller runs the command itself;
- so during a ring change two nodes may run commands of one room at the same time, and the
  commands stay right because their state is atomic in Redis or the database (per-room
  sequence script, message ids, clientMessageId idempotency);
- a command whose owner does not answer in `call_timeout` fails with the retryable error
  ``UNAVAILABLE``: it may or may not have run, and the client retries with the same
  idempotency key (never the server, blindly).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from coup.cluster.adapter import ClusterTimeout
from coup.cluster.bus import Bus
from coup.cluster.options import ClusterOptions
from coup.cluster.resp import RedisUnavailable
from coup.core.errors import INTERNAL_ERROR, ClientError
from coup.core.rooms import LocalRoomRouter, RoomCommand, UnknownCommand
from coup.protocol import jsonutil

log = logging.getLogger(__name__)

UNAVAILABLE = ClientError("UNAVAILABLE", "The room is moving to another server; please retry",
                          {"retryable": True})


class OwnerRequester(Protocol):
    """A request to one node's inbox (`coup.cluster.node.Cluster.request`)."""

    async def __call__(self, channel: bytes, message: dict[str, Any], timeout: float, *,
                       first_only: bool = ..., target: str | None = ...) -> list[Any]: ...


class RedisRoomRouter:
    """`coup.core.rooms.RoomRouter` across nodes; the commands run in a `LocalRoomRouter`."""

    def __init__(self, node_id: str, *, options: ClusterOptions, bus: Bus, owner: Callable[[str], str],
                 request: OwnerRequester, inbox: Callable[[str], bytes],
                 room_channel: Callable[[str], bytes | None]) -> None:
        """`owner(room)`: the owner on this node's ring; `inbox(node)`: a node's channel;
        `room_channel(room)`: the channel a member of `room` here hears it on, if any."""
        self.node_id = node_id
        self.options = options
        self.bus = bus
        self.owner = owner
        self._request = request
        self._inbox = inbox
        self._room_channel = room_channel
        self.local = LocalRoomRouter(node_id)
        self.stats = {"local": 0, "remote": 0, "fallback": 0, "served": 0, "timeout": 0}

    def register(self, name: str, command: RoomCommand) -> None:
        self.local.register(name, command)

    async def run_locally(self, room: str, name: str, payload: dict[str, Any]) -> Any:
        return await self.local.run_locally(room, name, payload)

    async def call(self, room: str, name: str, payload: dict[str, Any]) -> Any:
        if name not in self.local.commands:
            raise UnknownCommand(name)
        owner = self.owner(room)
        if owner == self.node_id:
            self.stats["local"] += 1
            return await self.run_locally(room, name, payload)
        message: dict[str, Any] = {"t": "call", "room": room, "name": name, "p": payload}
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
            responses = []
        finally:
            if room_channel is not None:
                self.bus.release([room_channel])
        if not responses:  # nobody listens on the owner's inbox: do it ourselves
            self.stats["fallback"] += 1
            return await self.run_locally(room, name, payload)
        self.stats["remote"] += 1
        reply = responses[0]
        if reply.get("ok"):
            return reply.get("result")
        error = reply.get("error") or {}
        raise ClientError(str(error.get("code", "INTERNAL")), str(error.get("message", "")), error.get("data"))

    async def serve(self, message: dict[str, Any]) -> dict[str, Any]:
        """Run a command another node routed to us and say how it went."""
        self.stats["served"] += 1
        try:
            result = await self.run_locally(str(message["room"]), str(message["name"]), message.get("p") or {})
            jsonutil.dumps(result)  # fail here, with a log, rather than in the reply
            return {"ok": True, "result": result}
        except ClientError as exc:
            return {"ok": False, "error": {"code": exc.code, "message": exc.message, "data": exc.data}}
        except UnknownCommand as exc:
            log.error("room command %s is not registered on this node", exc)
        except Exception:
            log.exception("room command %s for %s failed", message.get("name"), message.get("room"))
        return {"ok": False, "error": {"code": INTERNAL_ERROR.code, "message": INTERNAL_ERROR.message}}
