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


def test_a_steady_collector_collects_less_often_and_the_last_of_overlapping_runs_puts_the_thresholds_back() -> None:
    from pipeline.runtime import YOUNG_THRESHOLD, steady_collector

    before = gc.get_threshold()
    first, second = steady_collector(), steady_collector()
    first.__enter__()
    assert gc.get_threshold()[0] == max(YOUNG_THRESHOLD, before[0])
    second.__enter__()
    first.__exit__(None, None, None)  # the first run ends while the second still sends
    assert gc.get_threshold()[0] == max(YOUNG_THRESHOLD, before[0])
    later = _Node()
    gone = weakref.ref(later)
    del later
    gc.collect()
    assert gone() is None  # cycles are still collected meanwhile
    second.__exit__(None, None, None)
    assert gc.get_threshold() == before


def test_a_steady_collector_puts_the_thresholds_back_when_its_run_fails() -> None:
    from pipeline.runtime import steady_collector

    before = gc.get_threshold()
    try:
        with steady_collector():
            raise RuntimeError("the dispatch failed")
    except RuntimeError:
        pass
    assert gc.get_threshold() == before
