"""The slot scheduler on a fake clock: exact spacing, forfeited slots made up without bunching."""

from __future__ import annotations

import pytest

from pipeline.dispatch import ratelimit
from pipeline.dispatch.ratelimit import CATCH_UP, BusiestSecond, SlotLimiter


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(ratelimit.time, "monotonic", lambda: now[0])
    return now


def slots(limiter: SlotLimiter, clock: list[float], n: int) -> list[float]:
    """Reserves n slots at the current instant; returns their absolute times."""
    return [clock[0] + limiter.reserve() for _ in range(n)]


def test_slots_are_spaced_exactly_at_the_rate(clock):
    limiter = SlotLimiter(100)
    times = slots(limiter, clock, 101)
    assert times[-1] - times[0] == pytest.approx(1.0)
    assert min(b - a for a, b in zip(times, times[1:], strict=False)) == pytest.approx(0.01)


def test_forfeited_slots_are_made_up_at_most_catch_up_faster(clock):
    limiter = SlotLimiter(100)
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
    limiter = SlotLimiter(100)
    limiter.forfeit()
    limiter.throttled()
    times = slots(limiter, clock, 3)
    assert times[2] - times[1] == pytest.approx(1 / limiter.per_second)
    assert limiter.per_second == 50


def test_a_long_stall_is_not_made_up_in_full(clock):
    limiter = SlotLimiter(1000)
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
