"""The start-up heap is frozen out of the collector, and garbage made later is still collected."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from coup.heap import freeze_startup_heap


@pytest.fixture
def frozen() -> Iterator[int]:
    count = freeze_startup_heap()
    yield count
    gc.unfreeze()


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_startup_objects_are_frozen(frozen: int) -> None:
    assert frozen > 1000
    assert gc.get_freeze_count() > 1000  # they stay out of the collections that follow
    gc.collect()
    assert gc.get_freeze_count() > 1000


def test_cycles_made_after_the_freeze_are_still_collected(frozen: int) -> None:
    node = Node()
    ref = weakref.ref(node)
    del node
    gc.collect()
    assert ref() is None
