"""Per-study message sequence numbers (`seq`): monotonic and gap-free within a study.

The room's single writer (the `study.message` room command) asks for a number, stores the
message with it, and reports back: `give_back` when a message was not stored, `resync`
when the database's unique (study, seq) constraint says another writer already took it
(two owners during a ring change, a counter that lost its state). The writer then asks again.
A room has several numbered messages in flight (`coup.domain.study_rooms`): when one is not
stored, the writer moves the later ones down and the room gives back the *last* number it
was handed (`give_back(study, last)`), so the source's next number follows the stored ones.

`DatabaseSequence` (the default) remembers the last number per study in memory and reads
`MAX(seq)` from the database the first time, and raises its number to it at a `resync`
(never lowers it: numbers handed out may still be in flight); a cluster plugs in a
Redis counter (`coup.app` wires the cluster's generic counter in) behind the same three
methods, which is why this is a `Protocol`: the cluster never imports the domain.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

#: reads the highest stored seq of a study (0 when it has no message)
MaxSeqReader = Callable[[int], Awaitable[int]]


class SequenceSource(Protocol):
    async def next(self, study_id: int) -> int:
        """The number the next message of `study_id` should carry."""
        ...

    async def give_back(self, study_id: int, seq: int) -> None:
        """`seq` was not used; hand it out again if no later number was given."""
        ...

    async def resync(self, study_id: int) -> None:
        """`seq` clashed with a stored message: forget what you know about `study_id`."""
        ...


class DatabaseSequence(SequenceSource):
    """`MAX(seq) + 1`, cached per study. Correct with one writer per room (the room command);
    with two (a handoff), the unique constraint catches the clash and `resync` repairs it."""

    def __init__(self, read_max: MaxSeqReader) -> None:
        self._read_max = read_max
        self._last: dict[int, int] = {}

    async def next(self, study_id: int) -> int:
        last = self._last.get(study_id)
        if last is None:
            last = await self._read_max(study_id)
        value = self._last[study_id] = last + 1
        return value

    async def give_back(self, study_id: int, seq: int) -> None:
        if self._last.get(study_id) == seq:
            self._last[study_id] = seq - 1

    async def resync(self, study_id: int) -> None:
        # raised to what is stored, never lowered: numbers handed out may still be in flight
        # (a room numbers its next message before the last one committed)
        stored = await self._read_max(study_id)
        self._last[study_id] = max(stored, self._last.get(study_id, 0))
