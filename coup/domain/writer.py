"""Group commit: the writes of many rooms in one transaction, on a thread of their own.

A chat message used to be one transaction on a pool thread: about ten round trips and a WAL
flush each, so the database's commit rate, not the product, set the message rate (737
persisted messages/s on PostgreSQL against a bare INSERT rate of 2,752/s). A `BatchWriter`
runs one thread with one connection: whatever was submitted while the previous batch was
being written becomes the next batch, written by one call of `write` (one transaction, a
few statements for the whole batch; on PostgreSQL a large batch is one statement,
`coup.domain.message_statement`). Nothing waits for a batch to fill: under light load a
batch is one write and costs what it did before; under load batches grow by themselves, up
to `max_batch`. The loop hands its writes over once per loop turn, not one by one: when a
batch commits, the rooms it unblocks submit their next messages in the same turn, and they
all reach the writer together instead of the first one alone making a batch of one.

Guarantees the callers rely on:

- a future resolves only after its batch committed (an ack only after the commit);
- writes are handed to `write` in submission order (per-room `seq` order in the INSERT);
- a failed batch is written again one write at a time, so a single bad write (a row the
  database refuses) fails alone, and its neighbours are still stored; the bad one's future
  gets the exception (its caller refuses with RETRY, gives its `seq` back, acks nothing);
- with a `Numbering`, the writes of a series that are stored carry consecutive numbers,
  whatever writes before them gave theirs up (see below).

Numbered writes (`Numbering`): a room may submit its next message before the last one
committed (each with the next `seq` of its study), so one batch holds several messages of a
room. When a write gives its number up (refused, a duplicate, failed alone), the later
writes of its study must close the gap: inside one batch the write function does it (it
numbers a study's stored writes consecutively from the first one's number); across batches
this thread keeps a shift per study, subtracted from every later write's number, until the
loop has given the number back to its source and says so with `adjust` (through the same
queue, so every write numbered before the give-back is shifted, none after).

One connection, one commit in flight: a second thread with its own connection (the next
batch written while the last one's WAL flush is under way) was built and measured; in a
process at its one-GIL CPU ceiling it halved the batches and doubled the commits, and cost
more per message than it saved in waiting (docs/domain.md, "One commit in flight").

The IOLoop only enqueues (`queue.SimpleQueue.put` never blocks) and is woken once per batch.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from coup.domain.database import Database

log = logging.getLogger(__name__)

W = TypeVar("W")
R = TypeVar("R")
R_in = TypeVar("R_in", contravariant=True)

#: writes per transaction at most (bounds the statement size: SQLite allows 32,766 parameters)
MAX_BATCH = 256


class Numbering(Protocol[W, R_in]):
    """How a writer renumbers writes of a numbered series (a study's messages)."""

    def series(self, item: W) -> Hashable:
        """The series `item` is numbered in."""
        ...

    def shifted(self, item: W, by: int) -> W:
        """`item` with its number lowered by `by`."""
        ...

    def gives_up(self, outcome: R_in | BaseException) -> bool:
        """Whether the write whose outcome this is left its number unused."""
        ...


class _Adjust:
    """`shift[series] += delta` for the writes after this one (see `BatchWriter.adjust`)."""

    __slots__ = ("delta", "series")

    def __init__(self, series: Hashable, delta: int) -> None:
        self.series = series
        self.delta = delta


class _Stop:
    """Put on the queue by `close`: the thread finishes what came before it, then ends."""


_STOP = _Stop()


class _Pending(Generic[W, R]):
    __slots__ = ("future", "item", "loop")

    def __init__(self, item: W, loop: asyncio.AbstractEventLoop) -> None:
        self.item = item
        self.loop = loop
        self.future: asyncio.Future[R] = loop.create_future()


class BatchWriter(Generic[W, R]):
    """``writer = BatchWriter(database, write)``; ``result = await writer.submit(item)``.

    `write(items)` runs on the writer thread, in one transaction of its own making, and
    returns one result per item, in order. It must be idempotent per item (it may run again
    for an item whose batch failed): the message writes are, through clientMessageId and the
    unique (study, seq).
    """

    def __init__(self, database: Database, write: Callable[[Sequence[W]], list[R]], *, name: str,
                 max_batch: int = MAX_BATCH, numbering: Numbering[W, R] | None = None) -> None:
        self.database = database
        self.write = write
        self.name = name
        self.max_batch = max_batch
        self.numbering = numbering
        self._queue: queue.SimpleQueue[list[_Pending[W, R] | _Adjust] | _Stop] = queue.SimpleQueue()
        #: submitted in this loop turn, handed to the thread at its end (`_hand_over`)
        self._turn: list[_Pending[W, R] | _Adjust] = []
        #: the loop this turn's writes were submitted on (valid while `_turn` is not empty)
        self._turn_loop: asyncio.AbstractEventLoop | None = None
        #: on the thread: numbers given up per series and not yet `adjust`ed by the loop
        self._shift: dict[Hashable, int] = {}
        self._thread: threading.Thread | None = None
        self._closed = False
        self._start_lock = threading.Lock()
        #: batches written and writes in them (the mean batch size tells how much grouping helps)
        self.batches = 0
        self.writes = 0
        #: writes handed to the thread (minus `writes` and `writing`: waiting for a batch)
        self.handed = 0
        #: seconds spent writing (busy / wall time: how close the writer is to its limit)
        self.busy = 0.0
        #: writes in the batch being written now (0: waiting for work). The counters are
        #: brought up to date before the loop hears of a batch's results (`_write`): whoever
        #: sees a result sees its batch counted in `writes` and no longer in `writing`
        self.writing = 0

    async def submit(self, item: W) -> R:
        """Write `item` in the next batch; its result once that batch committed."""
        return await self.enqueue(item)

    def enqueue(self, item: W) -> asyncio.Future[R]:
        """Write `item` in the next batch, after everything enqueued before it (synchronous:
        the order of the calls is the order of the writes); resolves once that batch committed."""
        if self._closed:
            raise RuntimeError(f"the {self.name} writer is closed")
        pending: _Pending[W, R] = _Pending(item, self._loop())
        self._put(pending, pending.loop)
        return pending.future

    def adjust(self, series: Hashable, delta: int) -> None:
        """The loop gave numbers of `series` back to their source (`delta` < 0): writes
        enqueued from now on carry numbers that need no shift for them."""
        self._put(_Adjust(series, delta), self._loop())

    def _loop(self) -> asyncio.AbstractEventLoop:
        """The running loop; within a turn that already submitted, the one it was taken from
        (`asyncio.get_running_loop` is a getpid system call each time on Python 3.11)."""
        loop = self._turn_loop
        return loop if loop is not None and self._turn else asyncio.get_running_loop()

    def _put(self, entry: _Pending[W, R] | _Adjust, loop: asyncio.AbstractEventLoop) -> None:
        if self._thread is None:
            self._start()
        self._turn.append(entry)
        if len(self._turn) == 1:
            self._turn_loop = loop
            loop.call_soon(self._hand_over)

    def _hand_over(self) -> None:
        """At the end of the loop turn: this turn's writes go to the thread as one piece."""
        turn, self._turn = self._turn, []
        if self._closed:  # the thread may have taken its stop already: nobody would write these
            for pending in turn:
                if isinstance(pending, _Pending) and not pending.future.done():
                    pending.future.set_exception(RuntimeError(f"the {self.name} writer is closed"))
            return
        self.handed += sum(1 for entry in turn if isinstance(entry, _Pending))
        self._queue.put(turn)

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"coup-db-{self.name}", daemon=True)
                self._thread.start()

    def close(self) -> None:
        """Write what was submitted, then stop the thread (blocking: call it off the loop)."""
        self._closed = True
        thread = self._thread
        if thread is not None:
            self._queue.put(_STOP)
            thread.join()

    # ------------------------------------------------------------------ the writer thread

    def _run(self) -> None:
        try:
            stopping = False
            while not stopping:
                first = self._queue.get()
                if isinstance(first, _Stop):
                    break
                waiting = list(first)
                while len(waiting) < self.max_batch:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if isinstance(more, _Stop):
                        stopping = True
                        break
                    waiting += more
                for start in range(0, len(waiting), self.max_batch):
                    batch = waiting[start:start + self.max_batch]
                    self.writing = sum(1 for entry in batch if isinstance(entry, _Pending))
                    try:
                        self._write(batch)
                    finally:
                        self.writing = 0
        finally:
            db = self.database.db
            if not db.is_closed():  # this thread's connection
                db.close()

    def _numbered(self, entries: list[_Pending[W, R] | _Adjust]) -> tuple[list[_Pending[W, R]], list[W]]:
        """The batch's writes, each with the shift of its series at its place in the queue
        (an `_Adjust` changes the shift for the writes after it)."""
        pendings: list[_Pending[W, R]] = []
        items: list[W] = []
        shift = self._shift
        for entry in entries:
            if isinstance(entry, _Adjust):
                shift[entry.series] = shift.get(entry.series, 0) + entry.delta
                if not shift[entry.series]:
                    del shift[entry.series]
                continue
            pendings.append(entry)
            item = entry.item
            if self.numbering is not None:
                by = shift.get(self.numbering.series(item), 0)
                if by:
                    item = self.numbering.shifted(item, by)
            items.append(item)
        return pendings, items

    def _gave_up(self, items: Sequence[W], outcomes: Sequence[R | BaseException]) -> None:
        """Numbers the written batch left unused: the later writes of their series close the gap."""
        if self.numbering is None:
            return
        for item, outcome in zip(items, outcomes, strict=True):
            if self.numbering.gives_up(outcome):
                series = self.numbering.series(item)
                self._shift[series] = self._shift.get(series, 0) + 1

    def _write(self, entries: list[_Pending[W, R] | _Adjust]) -> None:
        started = time.perf_counter()
        shift_before = dict(self._shift)
        batch, items = self._numbered(entries)
        if not batch:
            return
        outcomes: list[R | BaseException]
        failed = False
        try:
            outcomes = list(self.database.call(self.write, items))
            if len(outcomes) != len(batch):
                raise RuntimeError(f"{self.name}: {len(outcomes)} results for {len(batch)} writes")
            self._gave_up(items, outcomes)
        except Exception as exc:
            failed = True
            self._shift = shift_before  # nothing of it was written: number it again, write by write
            if len(batch) == 1:
                self._numbered(entries)
                outcomes = [exc]
                self._gave_up(items, outcomes)
            else:
                log.warning("a batch of %d %s writes failed (%s); writing them one at a time",
                            len(batch), self.name, exc)
                outcomes = []
                for entry in entries:
                    alone, item = self._numbered([entry])
                    if alone:
                        outcomes.append(self._write_alone(item[0]))
                        self._gave_up(item, outcomes[-1:])
        seconds = time.perf_counter() - started
        self.batches += 1
        self.writes += len(batch)
        self.busy += seconds
        # done before the results go out: the loop may run `_settle` (and whatever its
        # futures wake) before this thread takes another step
        self.writing = 0
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Pending[W, R], R | BaseException]]] = {}
        for pending, outcome in zip(batch, outcomes, strict=True):
            by_loop.setdefault(pending.loop, []).append((pending, outcome))
        for loop, settled in by_loop.items():
            try:  # one wake-up of the loop per batch
                loop.call_soon_threadsafe(self._settle, settled, seconds, failed)
            except RuntimeError:  # that loop is closed: nobody waits any more
                pass

    def _write_alone(self, item: W) -> R | BaseException:
        try:
            (outcome,) = self.database.call(self.write, [item])
            return outcome
        except Exception as exc:
            return exc

    def _settle(self, settled: list[tuple[_Pending[W, R], R | BaseException]], seconds: float,
                failed: bool) -> None:
        """On the loop: resolve the batch's futures (and time the batch, like `Database.run`)."""
        metrics = self.database.metrics
        if metrics is not None:
            metrics.db_query(self.name, seconds, failed=failed)
        for pending, outcome in settled:
            if pending.future.done():  # its caller was cancelled
                continue
            if isinstance(outcome, BaseException):
                pending.future.set_exception(outcome)
            else:
                pending.future.set_result(outcome)


__all__ = ["MAX_BATCH", "BatchWriter", "Numbering"]
