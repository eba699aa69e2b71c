"""Send-rate control: a GCRA slot scheduler per sender, slowed down by throttling answers.

Each send takes the next free slot (`next += 1/rate`), so the long-run rate is exact and no
1-second window runs ahead of it; a token bucket with capacity = rate sends 2x in its first
second (MEASUREMENTS.md). Throttling answers halve the rate; quiet seconds restore it.
"""

from __future__ import annotations

import asyncio
import time


class SlotLimiter:
    def __init__(self, max_per_second: float, *, burst: int = 1, min_per_second: float = 1.0) -> None:
        if max_per_second <= 0:
            raise ValueError("max_per_second must be positive")
        self.target_per_second = max_per_second
        self.per_second = max_per_second
        self.min_per_second = min(min_per_second, max_per_second)
        # `burst` slots may be taken at once after an idle spell; 1 keeps windows tight.
        self._burst_s = (burst - 1) / max_per_second
        self._next = time.monotonic()
        self._last_throttle = 0.0
        self.throttles = 0

    def reserve(self) -> float:
        """Takes the next free slot; returns the seconds until it (0 when it is already due)."""
        now = time.monotonic()
        slot = max(self._next, now - self._burst_s)
        self._next = slot + 1.0 / self.per_second
        return max(0.0, slot - now)

    async def acquire(self) -> None:
        delay = self.reserve()
        if delay > 0:
            await asyncio.sleep(delay)

    def throttled(self, retry_after_s: float | None = None) -> None:
        """The provider said 'too fast': halve the rate (at most once per 0.5 s) and pause."""
        now = time.monotonic()
        self.throttles += 1
        if now - self._last_throttle > 0.5:
            self.per_second = max(self.min_per_second, self.per_second / 2)
            self._last_throttle = now
        if retry_after_s:
            self._next = max(self._next, now + retry_after_s)

    def recover(self) -> None:
        """Called on success: after 1 s without throttling, step back up toward the target."""
        if self.per_second < self.target_per_second and time.monotonic() - self._last_throttle > 1.0:
            self.per_second = min(self.target_per_second, self.per_second * 1.25)
            self._last_throttle = time.monotonic() - 0.5
