"""The group-commit writer's counters (coup/domain/writer.py `BatchWriter`: `handed`, `writes`,
`writing`) as the loop sees them.

Tests tell from them that a batch started and what queued behind it
(tests/domain/test_group_commit.py `queued_behind_a_blocked_batch`,
tests/domain/test_room_pipeline.py `queued_in_one_room`). So whoever sees a write's result
must see its batch counted as written and no longer being written. When `writing` still
counted the batch just acked, a message sent right after the ack (its batch held by a write
lock) looked like "the first batch started" before it was even handed over; the next message
then joined it in one batch and the wait for "numbered and handed over" never ended (the
flake of test_a_resent_message_mid_pipeline_is_stored_once_and_leaves_no_gap under load).

The timing is driven here, not hoped for: `PromptLoop` runs what the writer thread hands it
before that thread takes another step (the order a loaded machine may give at any time), and
reads the counters right there.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from coup.domain.database import Database
from coup.domain.models import database_proxy
from tests.waiting import TIMEOUT

pytestmark = pytest.mark.timeout(60)

Counters = tuple[int, int, int, int]


class PromptLoop(asyncio.SelectorEventLoop):
    """A loop that runs a callback another thread hands it (`call_soon_threadsafe`) before
    that thread goes on, and records what `observe` returns right after each one."""

    def __init__(self) -> None:
        super().__init__()
        self._home = threading.get_ident()
        self.observe: Callable[[], Counters] | None = None
        self.observed: list[Counters] = []

    def call_soon_threadsafe(self, callback: Callable[..., object], *args: Any,  # type: ignore[override]
                             context: Any = None) -> asyncio.Handle:
        if threading.get_ident() == self._home:
            return super().call_soon_threadsafe(callback, *args, context=context)
        ran = threading.Event()

        def run(*args: Any) -> None:
            try:
                callback(*args)
            finally:
                if self.observe is not None:
                    self.observed.append(self.observe())
                ran.set()

        handle = super().call_soon_threadsafe(run, *args, context=context)
        ran.wait(TIMEOUT)  # the handing thread waits for the loop (not a fixed pause)
        return handle


def stored(items: Sequence[int]) -> list[int]:
    """The batch's numbers in one transaction of the writer's connection."""
    with database_proxy.atomic():
        for n in items:
            database_proxy.execute_sql("INSERT INTO numbers (n) VALUES (?)", (n,))
    return list(items)


def test_a_batch_whose_results_the_loop_sees_is_counted_as_written(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'writer.db'}", workers=1)
    database.db.execute_sql("CREATE TABLE numbers (n INTEGER)")  # type: ignore[no-untyped-call]
    writer = database.writer(stored, name="numbers")

    async def written() -> list[int]:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, PromptLoop)
        loop.observe = lambda: (writer.handed, writer.writes, writer.writing, writer.batches)
        one_by_one = [await writer.submit(n) for n in (1, 2)]
        together = await asyncio.gather(writer.submit(3), writer.submit(4))  # one loop turn: one batch
        return one_by_one + list(together)

    try:
        with asyncio.Runner(loop_factory=PromptLoop) as runner:
            assert runner.run(written()) == [1, 2, 3, 4]
            loop = runner.get_loop()
            assert isinstance(loop, PromptLoop)
            observed = loop.observed
    finally:
        database.close()
    # (handed, writes, writing, batches) as the loop heard of each batch's results
    assert observed == [(1, 1, 0, 1), (2, 2, 0, 2), (4, 4, 0, 3)]
