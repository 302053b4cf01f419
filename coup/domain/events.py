"""The Socket.IO side of CoUp: authentication middleware, connect / disconnect, and the
client events. Handlers are thin: check the payload and the socket's right to act, then
hand over to the study rooms, notifications or presence.

Authorisation happens here (the socket is in the study room, the notification is the
user's own) and again in the room command (ACTIVE membership in the database). Every
refusal is a `ClientError`: the client gets ``error {message, code, event}`` and a failed
ack; nothing is logged as a crash and nothing changes.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

from coup.core import ConnectRefused, Socket, SocketServer
from coup.domain import queries, validation
from coup.domain.auth import Actor, TokenService, claimed_user_id, user_id_of
from coup.domain.database import Database
from coup.domain.errors import AUTH_FAILED_MESSAGE, client_error
from coup.domain.event_names import ClientEvent, ServerEvent
from coup.domain.live_checks import MembershipSweep, TokenExpiry
from coup.domain.notifications import Notifier
from coup.domain.presence_events import PresenceEvents
from coup.domain.ratelimit import Throttle, TokenBucket
from coup.domain.roomnames import group_room, study_of, study_room, user_room
from coup.domain.study_rooms import StudyRooms
from coup.logs import bind_user

#: disconnect reasons after which the user is gone at once, without the presence grace
LEFT_ON_PURPOSE = frozenset({"client namespace disconnect", "server namespace disconnect"})

log = logging.getLogger(__name__)


def actor(socket: Socket) -> Actor:
    return Actor(int(socket.data["userId"]), str(socket.data["userName"]))


class SocketEvents:
    def __init__(self, server: SocketServer, db: Database, rooms: StudyRooms, notifier: Notifier,
                 presence: PresenceEvents, messages: TokenBucket, typing: Throttle, *,
                 joins: TokenBucket | None = None, max_sockets_per_user: int = 50, token_leeway: float = 10.0,
                 membership_check_interval: float = 30.0) -> None:
        self.db = db
        self.metrics = server.metrics
        self.rooms = rooms
        self.notifier = notifier
        self.presence = presence
        self.message_limit = messages
        self.typing_throttle = typing
        self.join_limit = joins if joins is not None else TokenBucket(2.0, 20)
        self.max_sockets_per_user = max_sockets_per_user
        self.tokens: TokenService | None = None  # set when the domain starts (the secret may live in the db)
        nsp = server.main
        self.expiry = TokenExpiry(token_leeway, lambda: nsp.sockets)
        self.membership = MembershipSweep(membership_check_interval, lambda: nsp.sockets, self._active_pairs,
                                          rooms.leave, self._removed)
        #: this node's sockets of each user, counted from the middleware on (the per-user cap)
        self._user_sockets: dict[int, weakref.WeakSet[Socket]] = {}
        #: the handshake token's expiry, from the middleware to the connect handler
        self._expires: weakref.WeakKeyDictionary[Socket, float] = weakref.WeakKeyDictionary()
        #: study rooms each socket joined (a room's owner may take it out; its presence key is ours)
        self._joined: weakref.WeakKeyDictionary[Socket, set[int]] = weakref.WeakKeyDictionary()
        #: what the middleware learnt, for the connect handler of the same socket
        self._contexts: weakref.WeakKeyDictionary[Socket, queries.ConnectContext] = weakref.WeakKeyDictionary()
        #: set once a socket's connect handler finished: its disconnect handler waits for it
        self._connected: weakref.WeakKeyDictionary[Socket, asyncio.Event] = weakref.WeakKeyDictionary()
        server.describe_user = lambda socket: socket.data.get("userId")
        nsp.use(self.authenticate)
        nsp.on_connect(self.on_connect)
        nsp.on_disconnect(self.on_disconnect)
        nsp.on(ClientEvent.JOIN_STUDY, self.join_study)
        nsp.on(ClientEvent.LEAVE_STUDY, self.leave_study)
        nsp.on(ClientEvent.MESSAGE, self.message)
        nsp.on(ClientEvent.TYPING, self.typing)
        nsp.on(ClientEvent.READ, self.read)
        nsp.on(ClientEvent.NOTIFICATION_READ, self.notification_read)
        nsp.on_unhandled(self.unknown_event)

    # ------------------------------------------------------------------ connection

    async def authenticate(self, socket: Socket, auth: dict[str, Any]) -> None:
        """Handshake `auth` = {userId, token}: the token's `sub` must be that user, who must exist."""
        claimed = claimed_user_id(auth.get("userId"))
        verified = self.tokens.verify(auth.get("token")) if self.tokens is not None else None
        sub, exp = verified if verified is not None else (None, 0.0)
        user_id = user_id_of(sub)
        if claimed is None or user_id is None or sub != claimed:
            log.info("socket %s refused: %s", socket.id,
                     "no valid token" if sub is None else "token is not for the claimed userId")
            raise ConnectRefused(AUTH_FAILED_MESSAGE, {"code": "AUTH_FAILED"})
        context = await self.db.run(queries.connect_context, user_id)
        if context is None:
            log.info("socket %s refused: user %d does not exist", socket.id, user_id)
            raise ConnectRefused(AUTH_FAILED_MESSAGE, {"code": "AUTH_FAILED"})
        mine = self._user_sockets.setdefault(context.user_id, weakref.WeakSet())
        if sum(1 for s in mine if s.disconnect_reason is None) >= self.max_sockets_per_user:
            log.info("socket %s refused: user %d already has %d sockets here", socket.id, user_id,
                     self.max_sockets_per_user)
            raise ConnectRefused("연결이 너무 많습니다 (too many connections for this user)",
                                 {"code": "TOO_MANY_CONNECTIONS", "limit": self.max_sockets_per_user})
        mine.add(socket)
        socket.data["userId"] = context.user_id
        socket.data["userName"] = context.name
        bind_user(context.user_id)
        self._contexts[socket] = context
        self._expires[socket] = exp

    async def on_connect(self, socket: Socket) -> None:
        if not socket.connected:  # gone before we got here: its disconnect handler already ran
            return
        done = self._connected[socket] = asyncio.Event()
        try:
            context = self._contexts.pop(socket, None)
            if context is None:  # middleware skipped (a recovered session): ask again
                context = await self.db.run(queries.connect_context, int(socket.data["userId"]))
                if context is None:
                    socket.disconnect()
                    return
            # joins first, with no await in between for the memory adapter: the client's own
            # room is ready before it can act on the CONNECT reply
            await socket.join(user_room(context.user_id), *(group_room(g) for g in context.group_ids))
            await self.presence.attach(context.user_id, socket.id, context.active_study_ids)
            if not socket.connected:  # it left while we attached; its disconnect handler is waiting
                return
            exp = self._expires.pop(socket, None)
            if exp is not None:
                self.expiry.watch(socket, exp)
            if socket.recovered:
                await self._rejoin_recovered(socket)
        finally:
            done.set()

    async def _rejoin_recovered(self, socket: Socket) -> None:
        """A recovered socket is back in its study rooms: count it in again (and re-check membership)."""
        who = actor(socket)
        for room in socket.rooms:
            study_id = study_of(room)
            if study_id is None:
                continue
            try:
                await self.rooms.join(who, study_id, socket.id, recovered=True)
            except Exception as exc:  # refused (membership ended) or failed: it is not in the room
                log.info("recovered socket %s not back in %s: %s", socket.id, room, exc)
                await socket.leave(room)

    async def on_disconnect(self, socket: Socket, reason: str) -> None:
        connected = self._connected.pop(socket, None)
        if connected is not None:
            await connected.wait()
        self.expiry.forget(socket)
        if "userId" not in socket.data:
            return
        who = actor(socket)
        mine = self._user_sockets.get(who.id)
        if mine is not None:
            mine.discard(socket)
            if not mine:
                del self._user_sockets[who.id]
        joined = self._joined.pop(socket, set())
        # a dropped connection may come back (another node, a recovered session): its user
        # stays present for the grace; one closed on purpose leaves at once
        linger = reason not in LEFT_ON_PURPOSE
        for room in socket.rooms:
            study_id = study_of(room)
            if study_id is not None:
                joined.discard(study_id)
                await self.rooms.leave(who, study_id, socket.id, gone=True, linger=linger)
        for study_id in joined:  # taken out by the room's owner (membership ended): our key is left
            await self.rooms.forget_member(who.id, study_id, socket.id)
        await self.presence.detach(who.id, socket.id, linger=linger)

    # ------------------------------------------------------------------ study rooms

    def _in_room(self, socket: Socket, study_id: int) -> None:
        if study_room(study_id) not in socket.rooms:
            raise client_error("NOT_IN_STUDY")

    async def join_study(self, socket: Socket, args: list[Any]) -> dict[str, Any]:
        study_id = validation.required_id(validation.payload(args), "studyId")
        who = actor(socket)
        self._check_join_rate(who.id)
        result = await self.rooms.join(who, study_id, socket.id)
        self._joined.setdefault(socket, set()).add(study_id)
        return result

    async def leave_study(self, socket: Socket, args: list[Any]) -> dict[str, Any]:
        study_id = validation.required_id(validation.payload(args), "studyId")
        if study_room(study_id) not in socket.rooms:
            return {"ok": True, "studyId": study_id}
        who = actor(socket)
        self._check_join_rate(who.id)
        self._joined.get(socket, set()).discard(study_id)
        return await self.rooms.leave(who, study_id, socket.id)

    def _check_join_rate(self, user_id: int) -> None:
        """Joins and leaves announce member-joined / member-left to the whole room: bounded per user."""
        wait = self.join_limit.take(user_id)
        if wait > 0:
            raise client_error("RATE_LIMITED", "입장/퇴장을 너무 자주 하고 있습니다. 잠시 후 다시 시도하세요",
                               retryAfter=round(wait, 3))

    # ------------------------------------------------------------------ live checks

    async def _active_pairs(self, pairs: set[tuple[int, int]]) -> set[tuple[int, int]]:
        return await self.db.run(queries.active_pairs, pairs)

    def _removed(self, socket: Socket, study_id: int) -> None:
        socket.emit(ServerEvent.REMOVED_FROM_STUDY,
                    {"studyId": study_id, "code": "NOT_MEMBER", "message": client_error("NOT_MEMBER").message})

    async def message(self, socket: Socket, args: list[Any]) -> dict[str, Any]:
        data = validation.payload(args)
        study_id = validation.required_id(data, "studyId")
        content = validation.content(data)
        file_id = validation.optional_id(data, "fileId")
        client_message_id = validation.client_message_id(data)
        self._in_room(socket, study_id)
        who = actor(socket)
        self.check_message_rate(who.id)
        return await self.rooms.post_message(who, study_id, content, file_id, client_message_id)

    def check_message_rate(self, user_id: int) -> None:
        wait = self.message_limit.take(user_id)
        if wait > 0:
            if self.metrics is not None:
                self.metrics.refused_by_limit("message")
            raise client_error("RATE_LIMITED", "메시지를 너무 빨리 보내고 있습니다. 잠시 후 다시 시도하세요",
                               retryAfter=round(wait, 3))

    async def typing(self, socket: Socket, args: list[Any]) -> dict[str, Any]:
        study_id = validation.required_id(validation.payload(args), "studyId")
        self._in_room(socket, study_id)
        who = actor(socket)
        if not self.typing_throttle.allow((who.id, study_id)):
            if self.metrics is not None:
                self.metrics.refused_by_limit("typing")
            return {"ok": True, "throttled": True}
        return await self.rooms.typing(who, study_id, socket.id)

    async def read(self, socket: Socket, args: list[Any]) -> dict[str, Any]:
        message_id = validation.required_id(validation.payload(args), "messageId")
        return await self.rooms.read(actor(socket), message_id, socket.id)

    # ------------------------------------------------------------------ notifications

    async def notification_read(self, socket: Socket, args: list[Any]) -> dict[str, Any]:
        notification_id = validation.required_id(validation.payload(args), "notificationId")
        changed = await self.notifier.mark_read(actor(socket).id, notification_id, except_sid=socket.id)
        return {"ok": True, "notificationId": notification_id, "changed": changed}

    async def unknown_event(self, socket: Socket, args: list[Any]) -> None:
        raise client_error("UNKNOWN_EVENT")
