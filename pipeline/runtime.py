"""Long-running loops that must keep time: what they hold from start-up is kept out of the cyclic collector's sight.

CPython's oldest-generation collection walks every tracked object. A dispatcher's process holds Prefect, Pydantic
models, httpx and the campaign's records; the sandbox holds Meta's OpenAPI spec and its validators. There a full
collection took 150-250 ms, and while it ran no request left (or was stamped): the sends a collection held up went
out together after it, so a provider's clock counted 1.0875-1.15x a number's rate in its busiest second though the
dispatcher had spaced them (benchmarks/fleet.py). After `gc.freeze()` a collection looks only at what came later,
and the pauses are gone (the same run: 1.05x, no gap over 50 ms).

Refcounting still frees frozen objects; only reference cycles among them are never collected, so this is called
once what start-up built is in place, not per request: the sandbox once, a dispatcher at the start of each dispatch
run (a flow-run process runs one; a fallback leg a second, after a collection frees what the first left).

While a dispatch runs (`steady_collector`), the youngest generation is also collected less often. Nearly everything
a send makes is freed by reference counting, but what it keeps for a while (pages of queued messages, outcomes
waiting for the group commit, futures) adds up to a collection every 700 net allocations (about one every 20
messages), and every hundredth is a full one walking everything made since the freeze: 0.3-0.5 s of a
20,000-message dispatch's 10 s (benchmarks/throughput.py, 4 %). At YOUNG_THRESHOLD a few collections run in the
same dispatch; a cycle still waits at most that many objects to be freed.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

YOUNG_THRESHOLD = 20_000  # CPython's default: 700


def freeze_startup_objects() -> None:
    """Collects once, then moves every object alive now out of the collector's generations (gc.freeze)."""
    gc.collect()
    gc.freeze()


_steady_lock = threading.Lock()
_steady_runs = 0
_saved_thresholds: tuple[int, int, int] | None = None


@contextmanager
def steady_collector() -> Iterator[None]:
    """freeze_startup_objects, then the youngest generation collected after YOUNG_THRESHOLD net allocations until
    the block ends. Runs may overlap (two dispatches in one process): the first in saves the thresholds, the last
    out puts them back."""
    global _steady_runs, _saved_thresholds
    freeze_startup_objects()
    with _steady_lock:
        if _steady_runs == 0:
            _saved_thresholds = gc.get_threshold()
            gc.set_threshold(max(YOUNG_THRESHOLD, _saved_thresholds[0]), *_saved_thresholds[1:])
        _steady_runs += 1
    try:
        yield
    finally:
        with _steady_lock:
            _steady_runs -= 1
            if _steady_runs == 0 and _saved_thresholds is not None:
                gc.set_threshold(*_saved_thresholds)
                _saved_thresholds = None
