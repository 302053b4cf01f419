"""`user-online` / `user-offline`: one per transition of a user, not per socket.

`server.presence` counts sockets per user (cluster-wide in a cluster) and says when a
user's first socket arrived or last one left; only then is the transition announced, to
the study rooms of the user's ACTIVE studies in one broadcast, so a socket sharing several
studies with that user hears it once. The user's own sockets are left out.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from coup.core import SocketServer
from coup.domain import queries
from coup.domain.database import Database
from coup.domain.event_names import ServerEvent
from coup.domain.roomnames import study_room, user_room

log = logging.getLogger(__name__)


class PresenceEvents:
    def __init__(self, server: SocketServer, db: Database) -> None:
        self.server = server
        self.nsp = server.main
        self.db = db
        server.presence.on_lost(self._lost)

    async def attach(self, user_id: int, sid: str, active_study_ids: Iterable[int]) -> None:
        if await self.server.presence.attach(str(user_id), sid):
            self._announce(ServerEvent.USER_ONLINE, user_id, active_study_ids)

    async def detach(self, user_id: int, sid: str, *, linger: bool = True) -> None:
        """`linger`: the socket dropped; within the presence grace its user is still online,
        and `_lost` announces the offline if nobody came back by then."""
        # The study list is read before the transition, not after: nothing may be awaited
        # between learning "last socket gone" and announcing it, or a newer user-online from
        # another node could be delivered before this older user-offline.
        study_ids = await self.db.run(queries.active_study_ids, user_id)
        if await self.server.presence.detach(str(user_id), sid, linger=linger):
            self._announce(ServerEvent.USER_OFFLINE, user_id, study_ids)

    async def online(self, user_ids: Iterable[int]) -> set[int]:
        return {int(key) for key in await self.server.presence.online(str(uid) for uid in user_ids)}

    async def _lost(self, key: str) -> None:
        """A node died with this user's last socket: announce the user offline from here."""
        if key.isdigit():
            user_id = int(key)
            study_ids = await self.db.run(queries.active_study_ids, user_id)
            if await self.server.presence.online((key,)):
                return  # the user came back on another node while we looked the studies up
            self._announce(ServerEvent.USER_OFFLINE, user_id, study_ids)

    def _announce(self, event: str, user_id: int, study_ids: Iterable[int]) -> None:
        metrics = self.server.metrics
        if metrics is not None:
            metrics.presence("user", "online" if event == "user-online" else "offline")
        rooms = [study_room(s) for s in study_ids]
        if rooms:  # no rooms would mean "everyone"
            self.nsp.to(*rooms).except_(user_room(user_id)).emit(event, {"userId": user_id})
