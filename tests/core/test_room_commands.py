"""Room commands on their owner (coup/core/rooms.py): one at a time per room, and a command
that returns `Detached` lets the room's next command start while its caller still waits."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from coup.core.rooms import Detached, LocalRoomRouter
from tests.waiting import eventually

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]


def detaching(router: LocalRoomRouter, log: list[tuple[str, int]], release: asyncio.Event) -> None:
    async def command(room: str, p: dict[str, Any]) -> Detached:
        log.append(("started", p["n"]))

        async def rest() -> int:
            await release.wait()
            log.append(("finished", p["n"]))
            if p.get("fail"):
                raise ValueError(f"command {p['n']} failed")
            return int(p["n"])
        return Detached(rest())

    router.register("detaching", command)


async def test_a_detached_command_lets_the_room_go_and_runs_until_its_rest_is_done() -> None:
    router, log, release = LocalRoomRouter(), [], asyncio.Event()
    detaching(router, log, release)
    first = asyncio.ensure_future(router.call("r", "detaching", {"n": 1}))
    second = asyncio.ensure_future(router.call("r", "detaching", {"n": 2}))
    await eventually(lambda: log == [("started", 1), ("started", 2)], "the second started before the first ended")
    assert not first.done() and not second.done()
    assert router.running == 1 and not await router.room_idle("r", 0.05)  # a fence still waits for them
    release.set()
    assert await asyncio.gather(first, second) == [1, 2]
    assert await router.room_idle("r", 1.0) and await router.finish(1.0) and router.running == 0


async def test_a_failing_rest_reaches_its_caller_and_frees_the_room() -> None:
    router, log, release = LocalRoomRouter(), [], asyncio.Event()
    detaching(router, log, release)
    release.set()
    with pytest.raises(ValueError, match="command 1 failed"):
        await router.call("r", "detaching", {"n": 1, "fail": True})
    assert await router.call("r", "detaching", {"n": 2}) == 2
    assert router.running == 0
