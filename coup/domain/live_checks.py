"""What is checked again while a socket stays connected: its token's lifetime, and its
membership of the study rooms it is in.

A socket used to outlive its token (a 3 s token still posted at +16 s), and a member
removed in the database kept receiving the room's messages. Now:

- **Token lifetime**: when the handshake token expires (its `exp` plus the leeway), the
  socket gets ``error {code: "TOKEN_EXPIRED"}`` and is disconnected by the server (the
  client's ``disconnect`` reason is ``io server disconnect``, so it does not reconnect by
  itself): the client fetches a new token, sets ``socket.auth`` and calls ``connect()``.
  One loop timer serves every socket (a heap of deadlines, compacted as sockets leave).
- **Membership**: every `interval` seconds each node checks, in one query, that the users
  of its sockets in study rooms are still ACTIVE members; a socket whose membership ended
  gets ``removed-from-study {studyId, code: "NOT_MEMBER"}`` and leaves the room through
  the ordinary leave command on the room's owner (which announces ``member-left``). Between
  checks, the room's owner evicts a removed member the moment the room's next message or
  their next ``typing`` reaches the database (`StudyRooms.evict`).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Awaitable, Callable

from coup.core import ClientError, Socket
from coup.domain.auth import Actor
from coup.domain.roomnames import study_of

log = logging.getLogger(__name__)

TOKEN_EXPIRED = ClientError("TOKEN_EXPIRED", "인증이 만료되었습니다. 새 토큰으로 다시 연결하세요 (token expired)")


class TokenExpiry:
    """Disconnects each socket when its handshake token expires."""

    def __init__(self, leeway: float, sockets: Callable[[], dict[str, Socket]]) -> None:
        self.leeway = leeway
        self._sockets = sockets
        #: (deadline, sid): deadlines in seconds since the epoch (tokens carry epoch times)
        self._heap: list[tuple[float, str]] = []
        #: sid -> its deadline, for sockets still watched (stale heap entries are skipped)
        self._live: dict[str, float] = {}
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, socket: Socket, exp: float) -> None:
        deadline = exp + self.leeway
        self._live[socket.id] = deadline
        heapq.heappush(self._heap, (deadline, socket.id))
        if self._heap[0] == (deadline, socket.id):
            self._arm()

    def forget(self, socket: Socket) -> None:
        self._live.pop(socket.id, None)
        if len(self._heap) > 2 * len(self._live) + 64:  # mostly stale: rebuild (bounded memory)
            self._heap = [(d, sid) for sid, d in self._live.items()]
            heapq.heapify(self._heap)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        delay = max(0.0, self._heap[0][0] - time.time())
        self._timer = asyncio.get_running_loop().call_later(delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = time.time()
        heap, live, sockets = self._heap, self._live, self._sockets()
        while heap and heap[0][0] <= now:
            deadline, sid = heapq.heappop(heap)
            if live.get(sid) != deadline:
                continue
            del live[sid]
            socket = sockets.get(sid)
            if socket is not None and socket.connected:
                log.info("socket %s: token expired; disconnecting", sid)
                socket.send_error(TOKEN_EXPIRED, None)
                socket.disconnect()
        if heap:
            self._arm()


Leave = Callable[[Actor, int, str], Awaitable[object]]
ActivePairs = Callable[[set[tuple[int, int]]], Awaitable[set[tuple[int, int]]]]


class MembershipSweep:
    """Every `interval` seconds: this node's sockets in study rooms of users no longer ACTIVE
    there are told so and leave the room."""

    def __init__(self, interval: float, sockets: Callable[[], dict[str, Socket]], active_pairs: ActivePairs,
                 leave: Leave, notice: Callable[[Socket, int], None]) -> None:
        self.interval = interval
        self._sockets = sockets
        self._active_pairs = active_pairs
        self._leave = leave
        self._notice = notice
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check()
            except Exception:
                log.exception("membership check failed; next one in %.0f s", self.interval)

    async def check(self) -> int:
        """One pass; returns how many sockets left a room."""
        in_rooms: list[tuple[Socket, int, int]] = []
        for socket in list(self._sockets().values()):
            user_id = socket.data.get("userId")
            if not socket.connected or not isinstance(user_id, int):
                continue
            for room in socket.rooms:
                study_id = study_of(room)
                if study_id is not None:
                    in_rooms.append((socket, study_id, user_id))
        if not in_rooms:
            return 0
        active = await self._active_pairs({(study_id, user_id) for _, study_id, user_id in in_rooms})
        removed = 0
        for socket, study_id, user_id in in_rooms:
            if (study_id, user_id) in active or not socket.connected:
                continue
            log.info("socket %s: user %d is no longer an ACTIVE member of study %d; leaving its room",
                     socket.id, user_id, study_id)
            self._notice(socket, study_id)
            await self._leave(Actor(user_id, str(socket.data.get("userName", ""))), study_id, socket.id)
            removed += 1
        return removed
