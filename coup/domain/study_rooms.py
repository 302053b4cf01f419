"""Study rooms: every write scoped to one study runs as a room command on the room's owner.

`server.rooms.call("study:{id}", name, payload)` runs the command where the room is owned,
one at a time per room. That single writer is what makes `seq` gap-free, member-joined /
member-left exactly once per user, and a retried `clientMessageId` stored once. The message
command lets the room go once its message is numbered and handed to the writer (`Detached`):
the room's next message is numbered while this one is written, and the writer keeps the
stored ones gap-free when one in between is refused (`_Line`, `coup.domain.writer`). In one
process the owner is us; a cluster routes the call without this module changing, which is
why payloads and results are plain JSON and refusals come back as ``{"ok": false, ...}``.

The caller half (methods without a leading underscore) validates nothing: the socket
event handlers and the HTTP API have checked the payload and the caller's right to act
before they get here; the command re-checks ACTIVE membership against the database.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import logging
from collections.abc import Callable
from typing import Any

import peewee as pw

from coup.core import ONCE_WINDOW, ClientError, Detached, FetchTimeout, SocketServer
from coup.domain import queries
from coup.domain.access import membership_error
from coup.domain.auth import Actor
from coup.domain.database import Database
from coup.domain.errors import client_error, not_found, raise_refusal, refusal
from coup.domain.event_names import ServerEvent
from coup.domain.queries import MessageWrite, NewMessage
from coup.domain.roomnames import member_key, member_of, study_of, study_room, user_room
from coup.domain.sequence import SequenceSource
from coup.domain.writer import Numbering

log = logging.getLogger(__name__)


def _age(created_at: str) -> float:
    """Seconds since an ISO 8601 `createdAt` (UTC)."""
    return (dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(created_at.replace("Z", "+00:00"))).total_seconds()

JOIN = "study.join"
LEAVE = "study.leave"
MESSAGE = "study.message"
TYPING = "study.typing"
READ = "study.read"
#: the event a socket gets when it is taken out of a study room because its membership ended

#: attempts at storing one message when its seq clashes with another writer's
SEQ_ATTEMPTS = 3

#: rooms whose users present the owner keeps between commands at most (`_present`)
PRESENT_KEPT = 10_000

#: refusals of a join after which the owner has taken the socket out of the room
MEMBERSHIP_REFUSALS = ("NOT_MEMBER", "NOT_FOUND")

#: query outcomes that refuse, and what the client is told
REFUSALS: dict[str, Callable[[], ClientError]] = {
    "no_study": lambda: not_found("스터디"),
    "no_message": lambda: not_found("메시지"),
    "not_member": lambda: client_error("NOT_MEMBER"),
    "reused": lambda: client_error("CONFLICT"),
}


class MessageNumbering:
    """A study's messages are numbered in one series (`coup.domain.writer.Numbering`)."""

    def series(self, item: MessageWrite) -> int:
        return item.new.study_id

    def shifted(self, item: MessageWrite, by: int) -> MessageWrite:
        return dataclasses.replace(item, seq=item.seq - by)

    def gives_up(self, outcome: dict[str, Any] | BaseException) -> bool:
        return not queries.uses_number(outcome)


class _Place:
    """A numbered message's place in its room: its write, and the turns to broadcast."""

    __slots__ = ("after", "turn", "written")

    def __init__(self, written: asyncio.Future[dict[str, Any]], after: asyncio.Future[None] | None,
                 turn: asyncio.Future[None]) -> None:
        self.written = written
        #: done once the room's previous message was broadcast (or refused)
        self.after = after
        #: done once this one was broadcast (or refused): the next one's `after`
        self.turn = turn

    def release(self) -> None:
        if not self.turn.done():
            self.turn.set_result(None)


class _Line:
    """A study's messages between their number and their broadcast, on the room's owner.

    The room command numbers a message and hands it to the writer, then lets the room go:
    up to a batch of a room's messages are written together instead of one per commit.
    `lock` keeps a number and its hand-over together (the writer gets them in number
    order) and a give-back and its `adjust` together; `tail` chains the broadcasts in
    number order (batches commit in order; a message waits for the one before it)."""

    __slots__ = ("last", "lock", "open", "tail")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        #: the last number handed out
        self.last = 0
        self.tail: asyncio.Future[None] | None = None
        #: messages numbered and not finished
        self.open = 0


class StudyRooms:
    def __init__(self, server: SocketServer, db: Database, sequence: SequenceSource) -> None:
        self.server = server
        self.nsp = server.main
        self.db = db
        self.sequence = sequence
        #: chat messages are group-committed across rooms on a writer thread (coup/domain/writer.py)
        numbering: Numbering[MessageWrite, dict[str, Any]] = MessageNumbering()
        self.messages = db.writer(functools.partial(queries.store_messages, prepare=db.prepare),
                                  name="store_messages", numbering=numbering)
        #: studies with messages numbered and not finished, on their owner
        self._lines: dict[int, _Line] = {}
        #: on the owner: the users present in a study room, asked of every node once and then
        #: kept by the room's own join / leave / evict commands (`_present_users`)
        self._present: dict[int, tuple[int, frozenset[int]]] = {}  # study -> (the room's tenure, users)
        #: the router's `moves` when `_present` was last valid
        self._present_moves = server.rooms.moves
        router = server.rooms
        router.register(JOIN, self._join)
        router.register(LEAVE, self._leave)
        router.register(MESSAGE, self._message)
        router.register(TYPING, self._typing)
        router.register(READ, self._read)
        server.presence.on_lost(self._member_lost)

    def _count_member(self, direction: str) -> None:
        metrics = self.server.metrics
        if metrics is not None:
            metrics.presence("study_member", direction)

    async def _call(self, study_id: int, name: str, payload: dict[str, Any]) -> dict[str, Any]:
        return raise_refusal(await self.server.rooms.call(study_room(study_id), name, payload))

    # ------------------------------------------------------------------ callers

    async def join(self, actor: Actor, study_id: int, sid: str, *, recovered: bool = False) -> dict[str, Any]:
        """Put socket `sid` (held by this node) in the study room; ``{ok, studyId, online}``
        (without `online` for a `recovered` socket whose user was present all along).

        `recovered`: the socket is back in the room through connection state recovery.
        member-joined is announced when this is the user's first socket in the room anywhere,
        counting sockets that dropped less than the presence grace ago: a reconnect is no join.
        """
        key = member_key(study_id, actor.id)
        # counted first, where the socket lives: if this node dies, the survivors get the key
        # back through on_lost and announce member-left (`_member_lost`)
        first = await self.server.presence.attach(key, sid)
        try:
            result = await self._call(study_id, JOIN, {"studyId": study_id, "userId": actor.id,
                                                       "userName": actor.name, "sid": sid, "recovered": recovered,
                                                       "announce": first})
        except Exception as failed:
            # the owner took the socket out of the room, or it never got in: it is not counted
            taken_out = isinstance(failed, ClientError) and failed.code in MEMBERSHIP_REFUSALS
            if taken_out or study_room(study_id) not in self.nsp.adapter.socket_rooms(sid):
                await self.server.presence.detach(key, sid, linger=False)
            raise
        return result

    async def leave(self, actor: Actor, study_id: int, sid: str, *, gone: bool = False,
                    linger: bool = False) -> dict[str, Any]:
        """Take socket `sid` (held by this node) out of the room (`gone`: it disconnected and is
        out already; `linger`: it dropped, so member-left waits for the presence grace and is
        announced by `_member_lost` only if none of the user's sockets is back by then)."""
        last = await self.server.presence.detach(member_key(study_id, actor.id), sid, linger=linger)
        if not last and gone:
            return {"ok": True, "studyId": study_id}  # another socket of the user holds the room, or lingers
        return await self._call(study_id, LEAVE, {"studyId": study_id, "userId": actor.id, "sid": sid,
                                                  "gone": gone, "last": last})

    async def forget_member(self, user_id: int, study_id: int, sid: str) -> None:
        """Socket `sid` (held by this node) was taken out of the room by its owner (`evict`):
        drop the presence key this node attached for it at join."""
        await self.server.presence.detach(member_key(study_id, user_id), sid, linger=False)

    async def _member_lost(self, key: str) -> None:
        """A node died holding a user's last socket in a study room: the room's owner decides
        whether that user left (no socket of theirs in the room now) and announces it."""
        member = member_of(key)
        if member is None:
            return
        study_id, user_id = member
        try:
            await self._call(study_id, LEAVE, {"studyId": study_id, "userId": user_id, "sid": "", "gone": True})
        except Exception:
            log.exception("member-left for user %d in study %d after a node loss failed", user_id, study_id)

    async def post_message(self, actor: Actor, study_id: int, content: str, file_id: int | None,
                           client_message_id: str | None) -> dict[str, Any]:
        """Store and broadcast a message; ``{ok, id, studyId, seq, createdAt, duplicate}``."""
        return await self._call(study_id, MESSAGE, {
            "studyId": study_id, "userId": actor.id, "userName": actor.name, "content": content,
            "fileId": file_id, "clientMessageId": client_message_id,
        })

    async def typing(self, actor: Actor, study_id: int, sid: str) -> dict[str, Any]:
        return await self._call(study_id, TYPING, {"studyId": study_id, "userId": actor.id, "userName": actor.name,
                                                   "sid": sid})

    async def read(self, actor: Actor, message_id: int, sid: str | None) -> dict[str, Any]:
        """Store a read receipt once; ``{ok, messageId, studyId, new}``."""
        study_id = await self.db.run(queries.message_study, message_id)
        if study_id is None:
            raise not_found("메시지")
        return await self._call(study_id, READ, {"messageId": message_id, "userId": actor.id, "sid": sid})

    async def users_in(self, study_id: int, *, without_sid: str | None = None) -> set[int]:
        """Ids of the users with a socket in the study room (cluster-wide)."""
        return (await self._users_in(study_id, without_sid))[0]

    async def _users_in(self, study_id: int, without_sid: str | None = None) -> tuple[set[int], bool]:
        sockets, complete = await self._room_sockets(study_id)
        return {uid for sid, uid in sockets if sid != without_sid}, complete

    async def _room_sockets(self, study_id: int) -> tuple[list[tuple[str, int]], bool]:
        """The room's sockets (id, user id) on every node, and whether every node answered. A
        node that did not in time (stalled, or its link to the others being rebuilt in a
        Redis failover) leaves its sockets out rather than fail the message or join that
        asked; what a command saw from such an answer is not kept for the next one."""
        try:
            sockets, complete = await self.nsp.in_(study_room(study_id)).fetch_sockets(), True
        except FetchTimeout as exc:
            log.warning("study %d: not every node said in time which sockets it holds in the room; "
                        "going on with those that did", study_id)
            sockets, complete = exc.sockets, False
        return [(s.id, s.data["userId"]) for s in sockets if isinstance(s.data.get("userId"), int)], complete

    # ------------------------------------------------------------------ commands (on the owner)

    async def _present_users(self, study_id: int) -> frozenset[int]:
        """The users with a socket in the study room, for a message's notifications and evictions.

        Every change of who is in a room goes through a command of the room on its owner
        (join; leave, also for a user's last socket gone and, after the presence grace, one
        lost with its node; evict), and each of them leaves here what it saw, so a message
        asks every node for the room's sockets only the first time, not once per message
        (`fetch_sockets` was 10 % of the server's CPU per message). A ring change may have
        let another node run the room's commands in between: then everything kept is dropped.
        A user whose last socket dropped less than the presence grace ago counts as present
        until member-left is announced, as for member-joined / member-left. The same when this
        node's hold on the room was broken (`RoomRouter.tenure`: its lease went elsewhere)."""
        moves = self.server.rooms.moves
        if moves != self._present_moves:
            self._present.clear()
            self._present_moves = moves
        seen = self._seen(study_id)
        present = self._kept(study_id, seen)
        if present is None:
            users, complete = await self._users_in(study_id)
            present = frozenset(users)
            self._keep_present(study_id, present if complete else None, seen)
        return present

    def _seen(self, study_id: int) -> tuple[int, int]:
        """When a command looks: the ring changes and the room's tenure (what it keeps is
        kept only if neither changed before it is done)."""
        rooms = self.server.rooms
        return rooms.moves, rooms.tenure(study_room(study_id))

    def _kept(self, study_id: int, seen: tuple[int, int]) -> frozenset[int] | None:
        kept = self._present.get(study_id)
        return kept[1] if kept is not None and kept[0] == seen[1] else None

    def _keep_present(self, study_id: int, present: frozenset[int] | None, seen: tuple[int, int]) -> None:
        """What a command of the room saw present (None: it cannot tell; ask again next time),
        when the router said `seen` (`_seen`)."""
        self._present.pop(study_id, None)
        if present is None or not present or seen != self._seen(study_id):
            return
        if len(self._present) >= PRESENT_KEPT:
            del self._present[next(iter(self._present))]  # the one kept longest ago
        self._present[study_id] = (seen[1], present)

    async def _join(self, room: str, p: dict[str, Any]) -> dict[str, Any]:
        study_id, user_id, sid = int(p["studyId"]), int(p["userId"]), str(p["sid"])
        if study_of(room) != study_id:
            return refusal(client_error("BAD_REQUEST"))
        seen = self._seen(study_id)
        refused = await membership_error(self.db, study_id, user_id)
        if refused is not None:
            # a socket whose membership ended must not stay in the room
            await self.nsp.in_(sid).sockets_leave(room)
            self._keep_present(study_id, None, seen)
            return refusal(refused)
        if p.get("recovered") and p.get("announce") is False:
            # a recovered socket whose user stayed present: nothing to announce, and its caller
            # (`SocketEvents._rejoin_recovered`) has no use for `online`; the room's sockets,
            # a question to every node, are not asked for a thousand clients coming back at once
            await self.nsp.in_(sid).sockets_join(room)
            kept = self._kept(study_id, seen)
            self._keep_present(study_id, None if kept is None else kept | {user_id}, seen)
            return {"ok": True, "studyId": study_id}
        sockets, complete = await self._room_sockets(study_id)
        present = {uid for other, uid in sockets if other != sid}
        already_in = any(other == sid for other, _ in sockets)
        await self.nsp.in_(sid).sockets_join(room)
        self._keep_present(study_id, frozenset(present | {user_id}) if complete else None, seen)
        announce = p.get("announce")
        if announce is None:  # a caller from before the presence grace
            announce = p.get("recovered") or not already_in
        if announce and user_id not in present:
            self._count_member("joined")
            self.nsp.to(room).except_(sid).emit(
                ServerEvent.MEMBER_JOINED, {"studyId": study_id, "userId": user_id, "userName": p["userName"]})
        return {"ok": True, "studyId": study_id, "online": sorted(present | {user_id})}

    async def _leave(self, room: str, p: dict[str, Any]) -> dict[str, Any]:
        study_id, user_id, sid = int(p["studyId"]), int(p["userId"]), str(p["sid"])
        seen = self._seen(study_id)
        if not p.get("gone"):
            await self.nsp.in_(sid).sockets_leave(room)
        present, complete = await self._users_in(study_id, sid)
        self._keep_present(study_id, frozenset(present) if complete else None, seen)
        # presence says whether this was the user's last socket in the room: another one may
        # linger in its grace after a drop (it is in no room then, and comes back recovered
        # without a member-joined) or sit on a node that did not answer in time
        if user_id not in present and p.get("last", True):
            self._count_member("left")
            self.nsp.to(room).emit(ServerEvent.MEMBER_LEFT, {"studyId": study_id, "userId": user_id})
        return {"ok": True, "studyId": study_id}

    async def _typing(self, room: str, p: dict[str, Any]) -> dict[str, Any]:
        study_id, user_id = int(p["studyId"]), int(p["userId"])
        refused = await membership_error(self.db, study_id, user_id)
        if refused is not None:  # removed from the study while in its room
            await self.evict(study_id, {user_id})
            return refusal(refused)
        # to the other users: the typist's own tabs do not show "Alice is typing"
        self.nsp.to(room).except_(user_room(int(p["userId"]))).emit(
            ServerEvent.TYPING, {"userId": p["userId"], "userName": p["userName"], "studyId": study_id})
        return {"ok": True}

    async def _read(self, room: str, p: dict[str, Any]) -> dict[str, Any]:
        message_id, user_id, sid = int(p["messageId"]), int(p["userId"]), p.get("sid")
        result = await self.db.run(queries.mark_message_read, message_id, user_id)
        outcome = result["outcome"]
        if outcome in REFUSALS:
            return refusal(REFUSALS[outcome]())
        study_id = result["studyId"]
        if outcome == "read":
            target = self.nsp.to(study_room(study_id))
            if sid is not None:
                target = target.except_(str(sid))
            target.emit(ServerEvent.READ, {"messageId": message_id, "userId": user_id, "studyId": study_id})
        return {"ok": True, "messageId": message_id, "studyId": study_id, "new": outcome == "read"}

    async def evict(self, study_id: int, user_ids: set[int]) -> None:
        """On the room's owner: take every socket of `user_ids` (no longer ACTIVE members) out of the
        study room, telling each socket (`removed-from-study`) and the room (`member-left`)."""
        room = study_room(study_id)
        self._keep_present(study_id, None, self._seen(study_id))
        notice = {"studyId": study_id, "code": "NOT_MEMBER", "message": client_error("NOT_MEMBER").message}
        # a node that does not answer in time keeps its sockets until the next membership check
        for sid, uid in (await self._room_sockets(study_id))[0]:
            if uid in user_ids:
                log.info("study %d: user %d is no longer an ACTIVE member; socket %s leaves the room",
                         study_id, uid, sid)
                self.nsp.to(sid).emit(ServerEvent.REMOVED_FROM_STUDY, notice)
                await self.nsp.in_(sid).sockets_leave(room)
        # a message numbered meanwhile (this runs after a message's commit, with the room
        # free) may have asked who is present while they were still in: ask again next time
        self._keep_present(study_id, None, self._seen(study_id))
        for uid in sorted(user_ids):
            self.nsp.to(room).emit(ServerEvent.MEMBER_LEFT, {"studyId": study_id, "userId": uid})

    async def _message(self, room: str, p: dict[str, Any]) -> Detached | dict[str, Any]:
        """Number the message and hand it to the writer, then let the room go: its next message
        is numbered while this one is being written (`_Line`). The ack and the broadcast
        come once it committed (`_finish`), in the room's `seq` order."""
        new = NewMessage(study_id=int(p["studyId"]), user_id=int(p["userId"]), user_name=str(p["userName"]),
                         content=str(p["content"]), file_id=p.get("fileId"),
                         client_message_id=p.get("clientMessageId"))
        if study_of(room) != new.study_id:
            return refusal(client_error("BAD_REQUEST"))
        present = await self._present_users(new.study_id)
        line = self._lines.get(new.study_id)
        if line is None:
            line = self._lines[new.study_id] = _Line()
        line.open += 1
        try:
            place = await self._number(line, new, present)
        except BaseException:
            self._close(line, new.study_id)
            raise
        # the caller awaits the rest itself (no task of its own): only the server's shutdown
        # cancels a command, and a cancelled one releases its place in the room's order
        return Detached(self._finish(line, new, present, place))

    async def _number(self, line: _Line, new: NewMessage, present: frozenset[int], *,
                      resync: bool = False) -> _Place:
        """The study's next number for `new`, which goes to the writer at once (so the
        writer gets a study's messages in number order) and takes the last place in the
        room's broadcast order."""
        study_id = new.study_id
        async with line.lock:
            if resync:
                await self.sequence.resync(study_id)
            seq = line.last = await self.sequence.next(study_id)
            written = self.messages.enqueue(MessageWrite(new, seq, present))
            place = _Place(written, line.tail, written.get_loop().create_future())
            line.tail = place.turn
        return place

    async def _give_back(self, line: _Line, study_id: int) -> None:
        """A message of the room left its number unused: the writer moved the room's later
        messages down (`coup.domain.writer`), so the last number handed out goes back to the
        source, and the writer hears it after every message numbered so far."""
        async with line.lock:
            await self.sequence.give_back(study_id, line.last)
            line.last -= 1
            self.messages.adjust(study_id, -1)

    async def _finish(self, line: _Line, new: NewMessage, present: frozenset[int], place: _Place) -> dict[str, Any]:
        try:
            for _ in range(SEQ_ATTEMPTS):
                try:  # resolves once its batch committed: the ack and the broadcast come after
                    result = await place.written
                except Exception as failed:  # the writer counted its number as given up
                    await self._give_back(line, new.study_id)
                    if not isinstance(failed, pw.PeeweeException):
                        raise
                    log.exception("storing a message in study %d failed", new.study_id)
                    return refusal(client_error("RETRY"))
                outcome = result["outcome"]
                if not queries.uses_number(result):
                    await self._give_back(line, new.study_id)
                if outcome in ("seq_clash", "again"):
                    if outcome == "seq_clash":
                        log.warning("study %d: a seq was taken by another writer; resyncing", new.study_id)
                    place.release()  # our place in the room's order goes to the messages after us
                    place = await self._number(line, new, present, resync=outcome == "seq_clash")
                    continue
                if place.after is not None:
                    await place.after  # the room's previous message is broadcast first
                return await self._message_outcome(outcome, result)
            return refusal(client_error("RETRY"))
        finally:
            place.release()
            self._close(line, new.study_id)

    def _close(self, line: _Line, study_id: int) -> None:
        line.open -= 1
        if not line.open and self._lines.get(study_id) is line:
            del self._lines[study_id]

    async def _message_outcome(self, outcome: str, result: dict[str, Any]) -> dict[str, Any]:
        if outcome in REFUSALS:
            return refusal(REFUSALS[outcome]())
        message = result["message"]
        # Keyed by message id: a resend (same clientMessageId) broadcasts it again with the same
        # key, which goes out only if the first broadcast never did (the owner died between
        # storing and broadcasting), so every receiver gets the message once. Past the key's
        # window it is not tried again (nobody could tell whether it went out).
        room = self.nsp.to(study_room(message["studyId"])).once(f"message:{message['id']}", first=outcome == "stored")
        if outcome == "stored":
            evict = set(result.get("evict", ()))
            if evict:  # before the broadcast: someone no longer a member must not read it
                await self.evict(message["studyId"], evict)
            room.emit(ServerEvent.MESSAGE, message)
            for item in result["notifications"]:
                self.nsp.to(user_room(item["userId"])).emit(ServerEvent.NOTIFICATION, item["notification"])
        elif outcome == "duplicate" and _age(message["createdAt"]) < ONCE_WINDOW / 2:
            room.emit(ServerEvent.MESSAGE, message)
        return {"ok": True, "id": message["id"], "studyId": message["studyId"], "seq": message["seq"],
                "createdAt": message["createdAt"], "duplicate": outcome == "duplicate"}
