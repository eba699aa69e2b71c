"""Waiting for something to happen: poll a check until it holds or a deadline passes.

The deadline bounds the test, it asserts nothing about speed; on a loaded machine a wait takes longer and
still passes. A check that never holds fails with `what` (and `details()`, e.g. a server's log) named.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


def _gave_up(what: str, timeout_s: float, details: Callable[[], str] | None) -> AssertionError:
    extra = details() if details else ""
    return AssertionError(f"gave up after {timeout_s:g} s waiting for {what}" + (f"\n{extra}" if extra else ""))


def wait_for(check: Callable[[], T], *, timeout_s: float, what: str, every_s: float = 0.05,
             details: Callable[[], str] | None = None) -> T:
    """Returns the first truthy value of `check()`; AssertionError naming `what` once `timeout_s` has passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise _gave_up(what, timeout_s, details)
        time.sleep(every_s)


async def wait_for_async(check: Callable[[], Any] | Callable[[], Awaitable[Any]], *, timeout_s: float, what: str,
                         every_s: float = 0.01) -> Any:
    """`wait_for` inside an event loop: the loop keeps running (and can make the check come true) between polls."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise _gave_up(what, timeout_s, None)
        await asyncio.sleep(every_s)


class Deadline:
    """One time budget for a set-up of several steps (start a server, deploy, start a worker): each step may
    take what is left of it, so the set-up as a whole fails with its own message before the test's timeout."""

    def __init__(self, seconds: float, what: str) -> None:
        self.seconds, self.what = seconds, what
        self.ends = time.monotonic() + seconds

    def left(self, step: str, at_most: float | None = None) -> float:
        """Seconds left for `step` (at most `at_most`); AssertionError naming the set-up when none are."""
        left = self.ends - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{self.what} took longer than its {self.seconds:g} s set-up deadline "
                                 f"(no time left for {step}); the machine is too slow or a service hangs")
        return left if at_most is None else min(left, at_most)
