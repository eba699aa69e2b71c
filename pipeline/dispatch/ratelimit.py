"""Send-rate control: a GCRA slot scheduler per sender, slowed down by throttling answers.

Each send takes the next free slot (`next += 1/rate`), so the long-run rate is exact and no
1-second window runs ahead of it; a token bucket with capacity = rate sends 2x in its first
second (MEASUREMENTS.md). Throttling answers halve the rate; quiet seconds restore it.

A slot its send reached too late to use (the event loop or the ledger held it up) is forfeited
rather than used late, which would bunch sends; the time it stood for is made up over the next
slots, spaced at most CATCH_UP faster than the rate, as far as the last line below lets it.
`wait_for_slot` applies that rule where a send waits for its slot and then for a free session (the
concurrency cap), and holds the last line: however late its waits ended (sessions busy through a
provider's stall, the event loop held up), a send leaves only if the sender's last second, with it,
holds at most MAX_WINDOW x the rate: sends that come free together never bunch up into a second above
it. MAX_WINDOW is 1 + CATCH_UP, what the catch-up itself gives, not the 1.05x a provider's count may be
held to: the provider counts at its own clock, after the request's trip and its own stamping, and a window
there can hold sends from a little more than a second of ours; the rest is left to that jitter.
benchmarks/fleet.py, counted at the sandbox's clock on a 2-core machine that also runs the sandbox,
PostgreSQL and Prefect: gate 1.05x -> 1.05-1.075x, 1.02x -> 1.05-1.075x, 1.0x -> 1.0375-1.075x. What
decides there is the jitter (gaps of 30-60 ms, then a few requests together); a gate at 1.0x would also
leave no room to make up the time a stall took, and cost 0.3-1 % of the rate there.

BusiestSecond counts what the limiter let out: the most sends of a sender in any 1-second window, at
the dispatcher's clock (a provider's own timestamps add its delays in stamping them).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

CATCH_UP = 0.02
MAX_OWED_S = 0.5  # after a long stall, not more than this is made up
LATE_S = 0.02  # a send this late for its slot gives it up and takes the next free one
MAX_WINDOW = 1 + CATCH_UP  # no 1-second window of a sender's sends, as they leave, above this x its rate (see below)


class SlotLimiter:
    def __init__(self, max_per_second: float, *, burst: int = 1, min_per_second: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_per_second <= 0:
            raise ValueError("max_per_second must be positive")
        self.clock = clock
        self.target_per_second = max_per_second
        self.per_second = max_per_second
        self.min_per_second = min(min_per_second, max_per_second)
        # `burst` slots may be taken at once after an idle spell; 1 keeps windows tight.
        self._burst_s = (burst - 1) / max_per_second
        self._next = clock()
        self._last_throttle = 0.0
        self._owed_s = 0.0  # forfeited slot time still to make up
        self._departed: deque[float] = deque()  # when the sends of the last second left
        self.throttles = 0

    def reserve(self) -> float:
        """Takes the next free slot; returns the seconds until it (0 when it is already due)."""
        now = self.clock()
        slot = max(self._next, now - self._burst_s)
        step = 1.0 / self.per_second
        if self._owed_s > 0:
            fast = step / (1.0 + CATCH_UP)
            self._owed_s -= step - fast
            step = fast
        self._next = slot + step
        return max(0.0, slot - now)

    def forfeit(self, slots: int = 1) -> None:
        """Reserved slots went unused: make their time up over the following slots."""
        self._owed_s = min(MAX_OWED_S, self._owed_s + slots / self.per_second)

    def throttled(self, retry_after_s: float | None = None) -> None:
        """The provider said 'too fast': halve the rate (at most once per 0.5 s) and pause."""
        now = self.clock()
        self.throttles += 1
        self._owed_s = 0.0  # the provider wants less, not a catch-up
        if now - self._last_throttle > 0.5:
            self.per_second = max(self.min_per_second, self.per_second / 2)
            self._last_throttle = now
        if retry_after_s:
            self._next = max(self._next, now + retry_after_s)

    def recover(self) -> None:
        """Called on success: after 1 s without throttling, step back up toward the target."""
        if self.per_second < self.target_per_second and self.clock() - self._last_throttle > 1.0:
            self.per_second = min(self.target_per_second, self.per_second * 1.25)
            self._last_throttle = self.clock() - 0.5

    async def depart(self, n: int = 1, sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
        """Waits until `n` more sends fit in the last second (MAX_WINDOW x the rate), and counts them as gone."""
        cap = max(n, int(self.per_second * MAX_WINDOW + 1e-9))
        while True:
            now = self.clock()
            while self._departed and self._departed[0] <= now - 1.0:
                self._departed.popleft()
            if len(self._departed) + n <= cap:
                self._departed.extend([now] * n)
                return
            await sleep(self._departed[0] + 1.0 - now)


async def wait_for_slot(limiter: SlotLimiter, sessions: asyncio.Queue[Any] | None, n: int = 1, *,
                        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> Any:
    """Takes `n` slots and a session from `sessions` (None: the caller holds one, as a retry does) and returns the
    session when the sends may leave. A slot that passed while every session (or the event loop) was busy is
    forfeited (the limiter makes it up) and the next free one taken, not holding the session idle through a long
    wait; whatever came late, `depart` keeps the sender's every second within MAX_WINDOW x its rate."""
    slot_at = limiter.clock() + max(limiter.reserve() for _ in range(n))
    wait = slot_at - limiter.clock()
    if wait > 0:
        await sleep(wait)
    session = await sessions.get() if sessions is not None else None
    if limiter.clock() - slot_at > LATE_S:
        limiter.forfeit(n)
        wait = max(limiter.reserve() for _ in range(n))
        if wait > LATE_S and sessions is not None:
            sessions.put_nowait(session)
            await sleep(wait)
            session = await sessions.get()
        elif wait > 0:
            await sleep(wait)
    await limiter.depart(n, sleep)
    return session


class BusiestSecond:
    """The most sends in any `width_s` window so far, counted as they leave (`add` just before each request)."""

    def __init__(self, width_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.width_s, self.clock = width_s, clock
        self._recent: deque[float] = deque()  # send times of the last `width_s`
        self.most = 0

    def add(self, n: int = 1) -> None:
        now = self.clock()
        # Half-open windows [t, t + width): a send exactly `width_s` before this one is outside.
        while self._recent and self._recent[0] <= now - self.width_s:
            self._recent.popleft()
        self._recent.extend([now] * n)
        self.most = max(self.most, len(self._recent))
