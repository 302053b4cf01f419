"""A small app on the core API, for cluster tests (loaded in subprocesses with COUP_PLUGINS).

It exercises exactly what the CoUp domain uses: rooms, `to(room).emit`, acks, cluster-wide
socket queries, presence transitions, and a room command ("say") that runs on the room's
owner, takes a per-room sequence number and broadcasts — like the domain's `message`.
It lives in its own namespace, so the CoUp domain (installed by `coup serve`) and its
authentication stay out of its way; presence keys carry a ``t:`` prefix for the same reason.
"""

from __future__ import annotations

import itertools
import os
import zlib
from typing import Any

from coup.app import CoupNode
from coup.core import AckTimeout, ClientError, Socket

NAMESPACE = "/cluster-test"
PRESENCE = "t:"
#: node id -> socket ids whose disconnect handler has finished (presence detached, user-offline sent):
#: what a test awaits before it asserts that a close announced nothing
DISCONNECTS_HANDLED: dict[str, set[str]] = {}


def _room(args: list[Any]) -> str:
    if not args or not isinstance(args[0], dict) or not isinstance(args[0].get("room"), str):
        raise ClientError("BAD_PAYLOAD", "room required")
    return str(args[0]["room"])


def setup(node: CoupNode) -> None:
    sio = node.sio
    nsp = sio.of(NAMESPACE)
    cluster = node.cluster
    node_id = sio.node_id
    counters: dict[str, itertools.count[int]] = {}
    replies: dict[str, Any] = {}  # idempotency: a retried key gets its first reply

    async def nothing_stored(number: int) -> int:
        return 0

    numbers = cluster.counter("study", nothing_stored) if cluster is not None else None

    async def next_seq(room: str) -> int:
        if numbers is not None:
            return await numbers.next(zlib.crc32(room.encode()))
        return next(counters.setdefault(room, itertools.count(1)))

    async def say(room: str, payload: dict[str, Any]) -> Any:
        key = payload.get("key")
        if key and key in replies:
            return replies[key]
        seq = await next_seq(room)
        message = {"room": room, "text": payload.get("text"), "seq": seq, "by": payload.get("by"),
                   "owner": node_id}
        nsp.to(room).emit("said", message)
        reply = {"seq": seq, "owner": node_id}
        if key:
            replies[key] = reply
        return reply

    sio.rooms.register("test.say", say)

    async def on_say(socket: Socket, args: list[Any]) -> Any:
        room = _room(args)
        if room not in socket.rooms:
            raise ClientError("NOT_IN_ROOM", "join first")
        return await sio.rooms.call(room, "test.say", {"text": args[0].get("text"), "key": args[0].get("key"),
                                                  "by": socket.data.get("user")})

    async def on_join(socket: Socket, args: list[Any]) -> Any:
        await socket.join(_room(args))
        return {"node": node_id}

    async def on_leave(socket: Socket, args: list[Any]) -> Any:
        await socket.leave(_room(args))
        return True

    def on_emit(socket: Socket, args: list[Any]) -> Any:
        data = args[0]
        target = nsp.to(*data["rooms"]) if data.get("rooms") else nsp.except_()
        if data.get("except"):
            target = target.except_(*data["except"])
        if data.get("once"):
            target = target.once(data["once"])
        for i in range(int(data.get("times", 1))):  # several in one loop turn: a batch in a cluster
            payload = data.get("data") if "times" not in data else i
            if data.get("from_socket"):
                socket.to(*data["rooms"]).emit(data["event"], payload)
            else:
                target.emit(data["event"], payload)
        return True

    async def on_ask(socket: Socket, args: list[Any]) -> Any:
        data = args[0]
        try:
            acks = await nsp.to(data["room"]).timeout(data.get("timeout", 2.0)).emit_with_ack(
                "question", data.get("q"))
            return {"ok": True, "acks": sorted(acks, key=str)}
        except AckTimeout as exc:
            return {"ok": False, "acks": sorted(exc.responses, key=str)}

    async def on_fetch(socket: Socket, args: list[Any]) -> Any:
        room = _room(args)
        found = await nsp.to(room).fetch_sockets()
        return sorted([{"id": s.id, "user": s.data.get("user"), "node": s.node, "rooms": sorted(s.rooms)}
                       for s in found], key=lambda s: str(s["id"]))

    async def on_remote(socket: Socket, args: list[Any]) -> Any:
        data = args[0]
        target = nsp.to(data["target"])
        if data["op"] == "join":
            await target.sockets_join(data["room"])
        elif data["op"] == "leave":
            await target.sockets_leave(data["room"])
        else:
            await target.disconnect_sockets(close=bool(data.get("close")))
        return True

    async def on_online(socket: Socket, args: list[Any]) -> Any:
        keys = [PRESENCE + u for u in args[0]["users"]]
        return sorted(k[len(PRESENCE):] for k in await sio.presence.online(keys))

    def on_whoami(socket: Socket, args: list[Any]) -> Any:
        return {"node": node_id, "sid": socket.id, "pid": os.getpid()}

    for event, handler in [("say", on_say), ("join", on_join), ("leave", on_leave), ("emit", on_emit),
                           ("ask", on_ask), ("fetch", on_fetch), ("remote", on_remote), ("online", on_online),
                           ("whoami", on_whoami)]:
        nsp.on(event, handler)

    async def authenticate(socket: Socket, auth: dict[str, Any]) -> None:
        if isinstance(auth.get("user"), str):
            socket.data["user"] = auth["user"]

    async def connected(socket: Socket) -> None:
        user = socket.data.get("user")
        if user is not None:
            await socket.join(f"user:{user}")
            if await sio.presence.attach(PRESENCE + user, socket.id):
                nsp.emit("user-online", {"user": user, "node": node_id})

    async def disconnected(socket: Socket, reason: str) -> None:
        user = socket.data.get("user")
        if user is not None and await sio.presence.detach(PRESENCE + user, socket.id):
            nsp.emit("user-offline", {"user": user, "node": node_id})
        DISCONNECTS_HANDLED.setdefault(node_id, set()).add(socket.id)

    async def lost(key: str) -> None:
        if key.startswith(PRESENCE):
            nsp.emit("user-offline", {"user": key[len(PRESENCE):], "node": node_id, "lost": True})

    nsp.use(authenticate)
    nsp.on_connect(connected)
    nsp.on_disconnect(disconnected)
    sio.presence.on_lost(lost)
