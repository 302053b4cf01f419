"""The arena: a real `coup serve` process, honest Alice and Bob in study 1, and an attacker.

Every test checks the same four things after its attack (`Arena.survived`): the process
is up and answers /healthz, its resident memory grew by less than the test's bound, no
traceback reached its log, and Alice's messages still reach Bob (neither was disconnected,
nothing lost or duplicated). The attack's own answer is checked by the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest_asyncio

from tests.adversarial.attacks import Attacker
from tests.adversarial.target import HonestPair, Target


class Arena:
    def __init__(self, target: Target, honest: HonestPair) -> None:
        self.target = target
        self.honest = honest
        self.attacker = Attacker(target.port, target.token)
        self.rss_start = target.rss_mb()

    async def survived(self, max_growth_mb: float) -> float:
        """Assert the node is up, bounded and still serving the honest pair; return the growth in MB."""
        assert self.target.up(), self.target.log()[-3000:]
        growth = self.target.rss_mb() - self.rss_start
        assert growth < max_growth_mb, f"RSS grew by {growth:.0f} MB (bound {max_growth_mb} MB)"
        assert "Traceback" not in self.target.log(), self.target.log()[-3000:]
        await self.honest.exchange()
        self.honest.assert_unaffected()
        return growth


ArenaFactory = Callable[..., Awaitable[Arena]]


@pytest_asyncio.fixture
async def arena(tmp_path: Path) -> AsyncIterator[ArenaFactory]:
    """``a = await arena(COUP_X="1")``: a fresh server with those variables, the honest pair connected."""
    made: list[Arena] = []

    async def make(**env: str) -> Arena:
        workdir = tmp_path / f"server{len(made)}"
        workdir.mkdir()
        target = Target(workdir, env).start()
        try:
            honest = await HonestPair(target).connect()
            await honest.exchange()
        except BaseException:
            target.stop()
            raise
        made.append(Arena(target, honest))
        return made[-1]

    try:
        yield make
    finally:
        for a in made:
            try:
                await a.honest.close()
            finally:
                a.target.stop()

