"""Set-ups started early, one after the other in a thread of their own: a Prefect server takes 10-30 s to come
up, and the session needs it only minutes later. Once collection knows which fixtures the selected tests use,
tests/conftest.py queues the set-ups registered under those names, in the order the tests will need them; one at a
time, so they take the core the tests leave idle and no more. A fixture waits for its set-up's result (and starts
it at once if its turn has not come).

A set-up is a function of an ExitStack returning its value; what it enters on the stack is closed at the end of
the session (or by `close`). It starts processes and servers only: Prefect settings belong to the main thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from typing import Any

SetUp = Callable[[ExitStack], Any]
_registered: dict[str, SetUp] = {}
_bring_ups: dict[str, BringUp] = {}
_queue: list[str] = []
_lock = threading.Lock()


class BringUp:
    def __init__(self, name: str, set_up: SetUp) -> None:
        self.name, self.set_up = name, set_up
        self.stack = ExitStack()
        self.claimed = False  # taken by the queue's thread or a thread of its own
        self._done = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None

    def run(self) -> None:
        try:
            self._value = self.set_up(self.stack)
        except BaseException as exc:  # reported to the fixture that waits for it
            self._error = exc
        finally:
            self._done.set()

    def result(self, timeout_s: float) -> Any:
        if not self._done.wait(timeout_s):
            raise AssertionError(f"the set-up {self.name!r} did not finish within {timeout_s:g} s")
        if self._error is not None:
            raise self._error
        return self._value

    def close(self) -> None:
        if self.claimed:
            self._done.wait()
        self.stack.close()


def register(name: str, set_up: SetUp) -> None:
    """`set_up` provides the fixture `name`; it is queued as soon as a selected test is known to use it."""
    _registered[name] = set_up


def queue(names: Iterable[str]) -> None:
    """Queues the registered set-ups among `names` (in that order) and starts working through them."""
    with _lock:
        for name in names:
            if name in _registered and name not in _bring_ups:
                _bring_ups[name] = BringUp(name, _registered[name])
                _queue.append(name)
    threading.Thread(target=_work_through_the_queue, name="bring-ups", daemon=True).start()


def _work_through_the_queue() -> None:
    while True:
        with _lock:
            if not _queue:
                return
            bring_up = _bring_ups[_queue.pop(0)]
            bring_up.claimed = True
        bring_up.run()


def result(name: str, timeout_s: float) -> Any:
    """The value of set-up `name`; started now, in a thread of its own, if its turn has not come yet."""
    with _lock:
        bring_up = _bring_ups.setdefault(name, BringUp(name, _registered[name]))
        if name in _queue:
            _queue.remove(name)
        if not bring_up.claimed:
            bring_up.claimed = True
            threading.Thread(target=bring_up.run, name=f"bring-up:{name}", daemon=True).start()
    return bring_up.result(timeout_s)


def close(name: str) -> None:
    """Closes set-up `name` (stops what it started) before the end of the session."""
    with _lock:
        bring_up = _bring_ups.pop(name, None)
        if name in _queue:
            _queue.remove(name)
    if bring_up is not None:
        bring_up.close()


def close_all() -> None:
    with _lock:
        _queue.clear()
        bring_ups = list(_bring_ups.values())
        _bring_ups.clear()
    for bring_up in reversed(bring_ups):
        bring_up.close()
