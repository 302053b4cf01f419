"""Moving a polling session to the node its WebSocket upgrade reached (`coup.engine.adoption`).

Behind a round-robin router the upgrade may land on any node (the new node, N); the
session lives on its home (H). Three requests on the nodes' inboxes:

1. ``move-begin`` (on the probe): H starts the upgrade as for a local WebSocket (its
   waiting poll gets NOOP, later packets wait in its queue), then N answers ``3probe``.
2. ``move-take`` (on the client's UPGRADE): H waits briefly for the sockets' running
   handlers, then hands over the handshake, the unsent queue and each socket (id, pid,
   rooms, data); moves their presence entries to N (so N's death, not H's, takes the
   user offline); keeps a stub per socket that keeps the rooms heard and what reaches the
   socket; and drops the sockets without disconnect handlers (no user-offline, no
   member-left).
3. ``move-settle`` (once N's sockets joined their rooms, subscriptions confirmed): H hands
   over what the stubs kept; N drops what it delivered itself (broadcasts carry message
   ids), sends the rest, then what it held meanwhile, then lets the client's packets
   that waited through. What a handler still running on H sends afterwards is forwarded.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from coup.cluster.adapter import ClusterTimeout
from coup.cluster.resp import RedisUnavailable
from coup.core import moves
from coup.core.moves import MovedSocket
from coup.engine.handshake import HandshakeInfo
from coup.engine.session import Session
from coup.protocol.wire import Outbound

if TYPE_CHECKING:
    from coup.cluster.node import Cluster

log = logging.getLogger(__name__)

#: how long the home waits for handlers still running before it hands the sockets over
QUIESCE_TIMEOUT = 2.0


class _AwayUpgrade:
    """The home's stand-in for a WebSocket that reached another node (the session's `upgrading`)."""

    name = "websocket"

    def __init__(self, to: str) -> None:
        self.to = to

    def send(self, out: Outbound) -> None:  # pragma: no cover - an upgrading transport gets nothing
        pass

    def close(self, reason: str, *, graceful: bool) -> None:
        pass


def _encode_out(out: Outbound) -> list[Any]:
    import base64

    return [out.text, [base64.b64encode(b).decode("ascii") for b in out.binaries]]


def _decode_out(value: list[Any]) -> Outbound:
    import base64

    text, binaries = value
    return Outbound(text, tuple(base64.b64decode(b) for b in binaries))


class SessionMoves:
    """The cluster's `SessionAdopter`, and the home's side of the same three requests."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.stats = {"moved_in": 0, "moved_out": 0, "move_failed": 0}

    def _home(self, sid: str) -> str | None:
        home = self.cluster.node_of_sid(sid)
        if home is None or home == self.cluster.node_id or home not in self.cluster.registry.ring.nodes:
            return None
        return home

    async def _ask(self, home: str, op: str, **fields: Any) -> dict[str, Any]:
        cluster = self.cluster
        try:
            replies = await cluster.request(cluster.inbox(home), {"t": "req", "op": op, "to": cluster.node_id,
                                                                  **fields},
                                            cluster.options.request_timeout, target=home)
        except (RedisUnavailable, ClusterTimeout) as exc:
            return {"ok": False, "why": f"{type(exc).__name__}: {exc}"}
        reply = replies[0] if replies else None
        return reply if isinstance(reply, dict) else {"ok": False, "why": "no answer"}

    # ------------------------------------------------------------------ the node the WebSocket reached

    def can_adopt(self, sid: str) -> bool:
        return self._home(sid) is not None

    async def begin(self, sid: str) -> bool:
        home = self._home(sid)
        if home is None:
            return False
        reply = await self._ask(home, "move-begin", sid=sid)
        if not reply.get("ok"):
            self._failed(sid, home, "move-begin", reply)
        return bool(reply.get("ok"))

    async def adopt(self, session: Session) -> bool:
        cluster = self.cluster
        home = self._home(session.sid)
        sio = cluster.sio
        if home is None or sio is None:
            return False
        async with cluster.presence.moving_in():
            state = await self._ask(home, "move-take", sid=session.sid)
            if state.get("ok"):
                cluster.presence.take_over(state["presence"])
        if not state.get("ok"):
            self._failed(session.sid, home, "move-take", state)
            return False
        session.handshake = HandshakeInfo(**state["handshake"])
        for value in state["queue"]:
            session.send(_decode_out(value))
        moved = [MovedSocket.from_json(v) for v in state["sockets"]]
        for info in moved:
            adapter = cluster.adapters.get(info.nsp)
            if adapter is not None:
                adapter.expect_moved(info.id)
        sockets = await moves.take_in(sio, session, moved)
        settled = await self._ask(home, "move-settle", sid=session.sid, sockets=[[s.nsp.name, s.id] for s in sockets])
        kept = settled.get("kept", {}) if settled.get("ok") else {}
        for socket in sockets:
            adapter = cluster.adapters.get(socket.nsp.name)
            packets = kept.get(socket.id)
            if adapter is None or packets is None:
                # the home could not say what it kept (gone, or too much): the client starts afresh
                self._failed(session.sid, home, "move-settle", settled)
                moves.release(socket, ())
                return False
            missed = adapter.take_kept(socket.id, packets)
            moves.release(socket, missed, await adapter.floor_of(packets))
        self.stats["moved_in"] += 1
        log.info("session %s moved here from %s (%d sockets)", session.sid, home, len(sockets))
        return True

    def _failed(self, sid: str, home: str, step: str, reply: dict[str, Any]) -> None:
        self.stats["move_failed"] += 1
        self.cluster.alarms.raise_("move_failed", f"session {sid[:40]} could not move here from {home} "
                                                  f"({step}: {reply.get('why', 'refused')})")

    # ------------------------------------------------------------------ the home

    async def serve(self, message: dict[str, Any]) -> dict[str, Any]:
        op = message.get("op")
        sid = str(message.get("sid"))
        to = str(message.get("to"))
        session = self.cluster.sio.engine.sessions.get(sid) if self.cluster.sio is not None else None
        if op == "move-begin":
            return self._begin(session, to)
        if op == "move-take":
            return await self._take(session, to)
        if op == "move-settle":
            return self._settle(message.get("sockets", ()))
        raise ValueError(f"unknown move request {op!r}")

    def _begin(self, session: Session | None, to: str) -> dict[str, Any]:
        if session is None or not session.open:
            return {"ok": False, "why": "no such session here"}
        if session.upgraded or session.upgrading is not None or session.transport.name != "polling":
            return {"ok": False, "why": "already upgraded or upgrading"}
        away = _AwayUpgrade(to)
        session.begin_upgrade(away)
        # a client that never completes the upgrade keeps polling here
        opts = session.server.options
        session.server.loop.call_later(opts.upgrade_timeout, self._upgrade_timed_out, session, away)
        return {"ok": True}

    @staticmethod
    def _upgrade_timed_out(session: Session, away: _AwayUpgrade) -> None:
        if session.upgrading is away and session.open:
            log.info("session %s: its upgrade on %s did not complete in time", session.sid, away.to)
            session.abort_upgrade(away)

    async def _take(self, session: Session | None, to: str) -> dict[str, Any]:
        cluster = self.cluster
        sio = cluster.sio
        if session is None or sio is None or not session.open or not isinstance(session.upgrading, _AwayUpgrade) \
                or session.upgrading.to != to:
            return {"ok": False, "why": "no upgrade of that session to that node here"}
        await moves.quiesce(session, QUIESCE_TIMEOUT)
        if not session.open:
            return {"ok": False, "why": "the session closed meanwhile"}
        moved = moves.export_sockets(session)
        if moved is None:
            return {"ok": False, "why": "a namespace is still connecting"}
        sinks = {}
        for info in moved:
            adapter = cluster.adapters.get(info.nsp)
            if adapter is not None:
                sinks[info.id] = await adapter.hand_over(info.id, info.rooms, to)
        if not session.open:  # closed while we waited for the subscriptions' bookkeeping
            return {"ok": False, "why": "the session closed meanwhile"}
        handshake = asdict(session.handshake)
        handshake["headers"] = dict(session.handshake.headers)
        handshake["query"] = dict(session.handshake.query)
        handshake.pop("extra", None)
        moves.let_go(sio, session, lambda socket: sinks.get(socket.id) or socket.sink)
        queue = [_encode_out(out) for out in session.hand_over()]
        presence = await cluster.presence.hand_over({info.id for info in moved}, to)
        self.stats["moved_out"] += 1
        log.info("session %s moved to %s (%d sockets)", session.sid, to, len(moved))
        return {"ok": True, "handshake": handshake, "queue": queue, "sockets": [m.to_json() for m in moved],
                "presence": presence}

    def _settle(self, sockets: Any) -> dict[str, Any]:
        kept: dict[str, list[list[Any]]] = {}
        for nsp, sid in sockets:
            adapter = self.cluster.adapters.get(str(nsp))
            packets = adapter.settle(str(sid)) if adapter is not None else None
            if packets is not None:
                kept[str(sid)] = packets
        return {"ok": True, "kept": kept}
