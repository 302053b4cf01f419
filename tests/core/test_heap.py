"""The start-up heap is frozen out of the collector, and garbage made later is still collected."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from coup.heap import YOUNG_THRESHOLD, freeze_startup_heap


@pytest.fixture
def frozen() -> Iterator[int]:
    thresholds = gc.get_threshold()
    count = freeze_startup_heap()
    yield count
    gc.unfreeze()
    gc.set_threshold(*thresholds)


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_startup_objects_are_frozen(frozen: int) -> None:
    assert frozen > 1000
    assert gc.get_freeze_count() > 1000  # they stay out of the collections that follow
    gc.collect()
    assert gc.get_freeze_count() > 1000


def test_the_young_generation_is_collected_less_often(frozen: int) -> None:
    assert gc.get_threshold()[0] == YOUNG_THRESHOLD > 700


def test_cycles_made_after_the_freeze_are_still_collected(frozen: int) -> None:
    node = Node()
    ref = weakref.ref(node)
    del node
    gc.collect()
    assert ref() is None
