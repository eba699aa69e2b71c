"""The slot scheduler on a fake clock: exact spacing, forfeited slots made up without bunching; and the wait for a
slot and a session (the engine's workers) on fake time, sessions held up by a provider that stalls."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from typing import Any

import pytest

from pipeline.dispatch import ratelimit
from pipeline.dispatch.ratelimit import CATCH_UP, MAX_WINDOW, BusiestSecond, SlotLimiter, wait_for_slot


@pytest.fixture
def clock() -> list[float]:
    return [1000.0]


def limiter_on(clock: list[float], rate: float) -> SlotLimiter:
    return SlotLimiter(rate, clock=lambda: clock[0])


def slots(limiter: SlotLimiter, clock: list[float], n: int) -> list[float]:
    """Reserves n slots at the current instant; returns their absolute times."""
    return [clock[0] + limiter.reserve() for _ in range(n)]


def test_slots_are_spaced_exactly_at_the_rate(clock):
    limiter = limiter_on(clock, 100)
    times = slots(limiter, clock, 101)
    assert times[-1] - times[0] == pytest.approx(1.0)
    assert min(b - a for a, b in zip(times, times[1:], strict=False)) == pytest.approx(0.01)


def test_forfeited_slots_are_made_up_at_most_catch_up_faster(clock):
    limiter = limiter_on(clock, 100)
    slots(limiter, clock, 10)
    for _ in range(5):
        limiter.forfeit()  # five sends came too late for their slots
    times = slots(limiter, clock, 1000)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    # Never faster than CATCH_UP above the rate: no 1-second window bunches up.
    assert min(gaps) == pytest.approx(0.01 / (1 + CATCH_UP))
    # The five slots' time (0.05 s) is made up, and then the spacing is the rate's again.
    assert times[-1] - times[0] == pytest.approx(999 * 0.01 - 0.05)
    assert gaps[-1] == pytest.approx(0.01)
    most_in_a_second = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert most_in_a_second <= 100 * (1 + CATCH_UP) + 1


def test_throttling_cancels_the_catch_up(clock):
    limiter = limiter_on(clock, 100)
    limiter.forfeit()
    limiter.throttled()
    times = slots(limiter, clock, 3)
    assert times[2] - times[1] == pytest.approx(1 / limiter.per_second)
    assert limiter.per_second == 50


def test_a_long_stall_is_not_made_up_in_full(clock):
    limiter = limiter_on(clock, 1000)
    for _ in range(5000):  # five seconds of forfeited slots
        limiter.forfeit()
    times = slots(limiter, clock, 40_000)
    made_up = 39_999 * 0.001 - (times[-1] - times[0])
    assert made_up == pytest.approx(ratelimit.MAX_OWED_S)


def test_the_busiest_second_is_the_most_sends_in_any_half_open_1s_window():
    now = [50.0]
    busiest = BusiestSecond(clock=lambda: now[0])
    for at, n in [(50.0, 1), (50.5, 1), (50.99, 2), (51.0, 1), (51.2, 1), (53.0, 3)]:
        now[0] = at
        busiest.add(n)
    # The second from 50.5 holds 50.5, 50.99 (x2), 51.0 and 51.2: 5. The send at 50.0 is a full second before the
    # one at 51.0: never in one window with it (as benchmarks/fleet.py counts the sandbox's stamps).
    assert busiest.most == 5
    now[0] = 53.5
    busiest.add(3)  # 3 + 3 within 0.5 s
    assert busiest.most == 6


class FakeTime:
    """Time that moves only when every coroutine waits: `sleep` queues a wake-up, `run` wakes the earliest."""

    def __init__(self, loop_stalls: tuple[tuple[float, float], ...] = ()) -> None:
        self.now = 0.0
        self.loop_stalls = loop_stalls  # (start, end): a wake-up due in it comes at its end (the loop was busy)
        self._wakes: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    async def sleep(self, seconds: float) -> None:
        wake = asyncio.get_running_loop().create_future()
        at = self.now + max(0.0, seconds)
        at = next((end for start, end in self.loop_stalls if start <= at < end), at)
        heapq.heappush(self._wakes, (at, next(self._order), wake))
        await wake

    async def run(self, until: float) -> None:
        while self.now < until:
            for _ in range(200):  # everything runnable runs to its next wait
                await asyncio.sleep(0)
            if not self._wakes:
                return
            at, _, wake = heapq.heappop(self._wakes)
            self.now = max(self.now, at)
            wake.set_result(None)


def sends_through_stalls(rate: float, sessions_n: int, workers: int, stalls: list[tuple[float, float]]) -> list[float]:
    """The engine's workers on fake time: each waits for a slot and a session, sends, and gets its session back when
    the answer comes: after 10 ms, or at the end of a stall (the provider holds every request sent in it)."""
    time_ = FakeTime()
    limiter = SlotLimiter(rate, clock=lambda: time_.now)
    sent: list[float] = []

    async def answer(session: Any, at: float) -> None:
        end = next((stop for start, stop in stalls if start <= at < stop), at + 0.01)
        await time_.sleep(end - at)
        sessions.put_nowait(session)

    async def worker() -> None:
        while True:
            session = await wait_for_slot(limiter, sessions, sleep=time_.sleep)
            sent.append(time_.now)
            asyncio.ensure_future(answer(session, time_.now))

    async def main() -> None:
        for i in range(sessions_n):
            sessions.put_nowait(i)
        tasks = [asyncio.ensure_future(worker()) for _ in range(workers)]
        await time_.run(until=8.0)
        for task in tasks:
            task.cancel()

    sessions: asyncio.Queue[Any] = asyncio.Queue()
    asyncio.run(main())
    return sent


def most_in_a_second(sent: list[float]) -> int:
    return max(sum(1 for t in sent if start <= t < start + 1.0) for start in sent)


def test_sends_held_up_by_busy_sessions_never_bunch_up_when_the_sessions_come_back():
    # 20/s through 2 sessions, a pipeline of 10 workers; the provider stalls twice for a second: sessions come back
    # together, to workers whose slots passed long ago.
    sent = sends_through_stalls(20, 2, 10, stalls=[(1.0, 2.0), (2.0, 3.0), (4.0, 5.0)])
    busiest = most_in_a_second(sent)
    # However many sessions come free at once, no second holds more than MAX_WINDOW x the rate (20 at 20/s; with
    # nothing but the slots and the late rule to hold them, 29 went in one second).
    assert busiest <= 20 * MAX_WINDOW
    assert len(sent) > 8 * 20 * 0.5  # and it did send: the stalls hold up a few seconds of the eight


def test_retries_holding_their_sessions_never_bunch_up_after_the_event_loop_was_busy():
    # 10 retries at a time, each holding its session, at 20/s; the event loop is busy for a second: every wake-up due
    # in it comes at its end, long after those slots.
    time_ = FakeTime(loop_stalls=((1.0, 2.0), (3.5, 3.8)))
    limiter = SlotLimiter(20, clock=lambda: time_.now)
    sent: list[float] = []

    async def retry() -> None:
        while True:
            await wait_for_slot(limiter, None, sleep=time_.sleep)
            sent.append(time_.now)

    async def main() -> None:
        tasks = [asyncio.ensure_future(retry()) for _ in range(10)]
        await time_.run(until=6.0)
        for task in tasks:
            task.cancel()

    asyncio.run(main())
    assert most_in_a_second(sent) <= 20 * MAX_WINDOW  # slept-through slots sent at once: 31
    assert len(sent) > 4 * 20 * 0.9  # the four seconds without a stall went at the rate
