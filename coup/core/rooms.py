"""Room-scoped commands, run by the room's owner: the single writer of that room.

A command ("message", "read", ...) for room R runs where R is owned, one at a time per
room, so per-room order (and a per-room sequence) has one author. In one process the owner
is always us; a cluster routes the call to the owner node of its consistent-hash ring
(`coup.cluster`). Payloads and results must be JSON-able: they may cross nodes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

RoomCommand = Callable[[str, dict[str, Any]], Awaitable[Any]]


class UnknownCommand(LookupError):
    pass


class Detached:
    """A command's result that is not ready yet but needs the room no more: the room's next
    command may start while the caller still waits for `rest` (the command's own ordering
    then keeps the room's effects in order; see `coup.domain.study_rooms`). The router
    still counts the command as running until `rest` is done (`finish`, `room_idle`)."""

    __slots__ = ("rest",)

    def __init__(self, rest: Awaitable[Any]) -> None:
        self.rest = rest


class RoomRouter(Protocol):
    """Where room commands run: `register` them once, `call` them from anywhere."""

    #: commands by where they ran ("local"; a cluster router adds its own kinds)
    stats: dict[str, int]
    #: ring changes seen here: what an owner keeps about its rooms between commands (the
    #: users in a room, `coup.domain.study_rooms`) holds only while this is unchanged, since
    #: another node may have run the room's commands in between
    moves: int

    def register(self, name: str, command: RoomCommand) -> None: ...

    def owner(self, room: str) -> str:
        """The node that owns `room`."""
        ...

    def tenure(self, room: str) -> int:
        """Changes when this node comes to own `room` again after another node may have run
        its commands (a room lease changing hands) without a ring change; with `moves`, what
        an owner may keep about the room between its commands."""
        ...

    async def call(self, room: str, name: str, payload: dict[str, Any]) -> Any:
        """Run command `name` for `room` on its owner and return its result."""
        ...


class LocalRoomRouter:
    """Single process: run here, serialised per room (also what a cluster runs on the owner)."""

    def __init__(self, node_id: str = "local") -> None:
        self.commands: dict[str, RoomCommand] = {}
        self.stats: dict[str, int] = {"local": 0}
        #: one process owns every room for good
        self.moves = 0
        self.node_id = node_id
        self._locks: dict[str, asyncio.Lock] = {}
        self._waiting: dict[str, int] = {}

    def register(self, name: str, command: RoomCommand) -> None:
        self.commands[name] = command

    def owner(self, room: str) -> str:
        return self.node_id

    def tenure(self, room: str) -> int:
        return 0

    @property
    def running(self) -> int:
        """Rooms with a command running or queued here."""
        return len(self._waiting)

    async def finish(self, timeout: float) -> bool:
        """A draining node, once the others own its rooms, lets the commands it took finish."""
        return await self._until(lambda: not self._waiting, timeout, 0.01)

    async def room_idle(self, room: str, timeout: float) -> bool:
        """Wait (at most `timeout` s) until no command of `room` runs or waits here."""
        return await self._until(lambda: room not in self._waiting, timeout, 0.005)

    @staticmethod
    async def _until(done: Callable[[], bool], timeout: float, poll: float) -> bool:
        """Poll `done` every `poll` s; False when `timeout` s passed first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not done():
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(poll)
        return True

    async def run_locally(self, room: str, name: str, payload: dict[str, Any]) -> Any:
        command = self.commands.get(name)
        if command is None:
            raise UnknownCommand(name)
        lock = self._locks.get(room)
        if lock is None:
            lock = self._locks[room] = asyncio.Lock()
        self._waiting[room] = self._waiting.get(room, 0) + 1
        try:
            async with lock:
                result = await command(room, payload)
            if isinstance(result, Detached):
                return await result.rest
            return result
        finally:
            left = self._waiting[room] - 1
            if left:
                self._waiting[room] = left
            else:  # nobody else queued for this room: drop its lock
                del self._waiting[room]
                del self._locks[room]

    async def call(self, room: str, name: str, payload: dict[str, Any]) -> Any:
        self.stats["local"] += 1
        return await self.run_locally(room, name, payload)
