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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

YOUNG_THRESHOLD = 20_000  # CPython's default: 700


def freeze_startup_objects() -> None:
    """Collects once, then moves every object alive now out of the collector's generations (gc.freeze)."""
    gc.collect()
    gc.freeze()


class SharedSettings:
    """Interpreter settings (process-wide) that runs overlapping in several threads share: the first one in saves
    and changes them (`change` returns what it saved), the last one out puts them back (`restore`)."""

    def __init__(self, change: Callable[[], Any], restore: Callable[[Any], None]) -> None:
        self._change, self._restore = change, restore
        self._lock = threading.Lock()
        self._inside = 0
        self._saved: Any = None

    def __enter__(self) -> None:
        with self._lock:
            if self._inside == 0:
                self._saved = self._change()
            self._inside += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._inside -= 1
            if self._inside == 0:
                self._restore(self._saved)


def _fewer_young_collections() -> tuple[int, int, int]:
    saved = gc.get_threshold()
    gc.set_threshold(max(YOUNG_THRESHOLD, saved[0]), *saved[1:])
    return saved


_STEADY = SharedSettings(_fewer_young_collections, lambda saved: gc.set_threshold(*saved))


@contextmanager
def steady_collector() -> Iterator[None]:
    """freeze_startup_objects, then the youngest generation collected after YOUNG_THRESHOLD net allocations until
    the block ends (two dispatches in one process may overlap: the last out puts the thresholds back)."""
    freeze_startup_objects()
    with _STEADY:
        yield
