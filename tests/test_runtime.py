"""pipeline/runtime.py: what is alive at the freeze leaves the collector's generations; what comes later is still
collected, cycles included."""

from __future__ import annotations

import gc
import weakref

from pipeline.runtime import freeze_startup_objects


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_the_freeze_takes_what_lives_and_leaves_later_cycles_collectable() -> None:
    kept = [_Node() for _ in range(100)]
    before = gc.get_freeze_count()
    freeze_startup_objects()
    assert gc.get_freeze_count() >= before + len(kept)  # the live ones are out of the generations now
    later = _Node()
    gone = weakref.ref(later)
    del later
    gc.collect()
    assert gone() is None  # a cycle made after the freeze is still collected
