"""Send windows and send-at (pipeline/dispatch/schedule.py, the guards in policy.py, the engine's last check): when
each recipient's window opens and closes (daily hours, dated slots, local or absolute), each zone's 10:00, and a
dispatch whose window closes while it sends: nothing leaves after the close, the rest stays queued and the result
says when the campaign continues (the flow schedules that run: tests/flows/test_window_continues.py)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import polars as pl

from pipeline.dispatch.engine import dispatch_campaign
from pipeline.dispatch.policy import Guards
from pipeline.dispatch.schedule import Window, release_times
from pipeline.spec import RateSpec, SendAt, SendWindow
from pipeline.store import Store
from tests.helpers.whatsapp import CloudApi, channel, queue

TOKYO, LONDON = ZoneInfo("Asia/Tokyo"), ZoneInfo("Europe/London")
NOW = datetime(2026, 12, 7, 8, 30, tzinfo=UTC)  # 08:30 in London, 17:30 in Tokyo


def test_daily_hours_open_and_close_in_each_recipients_zone() -> None:
    window = Window(SendWindow(start="09:00", end="17:00:30"))
    assert not window.inside(LONDON, NOW) and not window.inside(TOKYO, NOW)
    assert window.inside(TOKYO, NOW - timedelta(hours=1))  # 16:30 there
    assert window.inside(TOKYO, datetime(2026, 12, 7, 8, 0, 29, tzinfo=UTC))  # 17:00:29: seconds count
    assert window.next_opening(LONDON, NOW) == datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
    assert window.next_opening(TOKYO, NOW) == datetime(2026, 12, 8, 0, 0, tzinfo=UTC)  # tomorrow 09:00 JST
    overnight = Window(SendWindow(start="22:00", end="02:00"))
    assert overnight.inside(LONDON, datetime(2026, 12, 7, 23, 0, tzinfo=UTC))
    assert overnight.inside(LONDON, datetime(2026, 12, 7, 1, 0, tzinfo=UTC))


def test_dated_slots_local_and_absolute() -> None:
    local = Window(SendWindow(slots=[{"start": "2026-12-07T10:00:00", "end": "2026-12-07T10:00:05"},
                                     {"start": "2026-12-07T18:00:00", "end": "2026-12-07T19:00:00"}]))
    # 10:00 in London is 10:00 UTC in December; in Tokyo it was 01:00 UTC.
    assert local.inside(LONDON, datetime(2026, 12, 7, 10, 0, 4, tzinfo=UTC))
    assert not local.inside(LONDON, datetime(2026, 12, 7, 10, 0, 5, tzinfo=UTC))
    assert local.next_opening(LONDON, datetime(2026, 12, 7, 10, 0, 5, tzinfo=UTC)) == datetime(
        2026, 12, 7, 18, 0, tzinfo=UTC)
    assert local.next_opening(TOKYO, NOW) == datetime(2026, 12, 7, 9, 0, tzinfo=UTC)  # 18:00 JST
    absolute = Window(SendWindow(slots=[{"start": "2026-12-07T10:00:00+00:00", "end": "2026-12-07T11:00:00+00:00"}]))
    assert absolute.inside(TOKYO, datetime(2026, 12, 7, 10, 30, tzinfo=UTC))  # the same instant everywhere
    assert absolute.next_opening(TOKYO, datetime(2026, 12, 7, 11, 0, tzinfo=UTC)) is None  # no slot left


def test_send_at_releases_each_zone_at_its_own_local_time() -> None:
    zones = pl.Series(["Europe/London", "Asia/Tokyo", None, "America/New_York", "Europe/London"])
    at = release_times(zones, SendAt.model_validate("10:00"), NOW).to_list()
    assert at[0] == at[4] == datetime(2026, 12, 7, 10, 0, tzinfo=UTC)  # later today in London
    # 17:30 in Tokyo: 10:00 passed more than an hour ago, so tomorrow's.
    assert at[1] == datetime(2026, 12, 8, 1, 0, tzinfo=UTC)
    assert at[2] == datetime(2026, 12, 7, 10, 0, tzinfo=UTC)  # no zone: UTC
    assert at[3] == datetime(2026, 12, 7, 15, 0, tzinfo=UTC)  # 03:30 in New York: 10:00 EST
    # 08:00 passed 30 min ago: tomorrow's with a 20-min grace, now with an hour's.
    late = release_times(pl.Series(["Europe/London"]), SendAt(local_time="08:00", late_s=1200), NOW).to_list()
    assert late == [datetime(2026, 12, 8, 8, 0, tzinfo=UTC)]
    grace = release_times(pl.Series(["Europe/London"]), SendAt(local_time="08:00", late_s=3600), NOW).to_list()
    assert grace == [NOW]


def test_a_window_closing_mid_dispatch_sends_nothing_after_the_close_and_says_when_it_continues(
    sqlite_db: Store
) -> None:
    queue(sqlite_db, 40, tz="Europe/London")
    now = datetime.now(UTC)
    close, reopen = now + timedelta(seconds=1.5), now + timedelta(minutes=10)
    window = SendWindow(slots=[{"start": now - timedelta(minutes=1), "end": close},
                               {"start": reopen, "end": reopen + timedelta(minutes=5)}])
    sent_at: list[datetime] = []

    def stamp(request: httpx.Request, body: dict) -> None:
        sent_at.append(datetime.now(UTC))

    api = CloudApi(before=stamp)
    result = asyncio.run(dispatch_campaign(
        sqlite_db, "t", channel(), rate=RateSpec(max_per_second=10, concurrency=4),
        guards=Guards(send_window=window), transport=api))
    # Some went while it was open; every request left before the close (claimed ones waiting for their rate slot
    # at the close went back to queued).
    assert 0 < result.sent < 40 and len(sent_at) == result.sent == api.sandbox.accepted
    assert max(sent_at) < close
    queued = sqlite_db.scalar("SELECT count(*) FROM outbox WHERE state = 'queued'")
    assert queued == result.waiting == 40 - result.sent
    assert result.continue_at == reopen
    assert api.sandbox.duplicate_callback_data == 0


def test_messages_released_later_wait_and_the_result_names_their_release(sqlite_db: Store) -> None:
    queue(sqlite_db, 10)
    release = (datetime.now(UTC) + timedelta(hours=3)).replace(microsecond=0)
    sqlite_db.execute("UPDATE outbox SET not_before = :at WHERE seq >= 6", at=release)  # what send-at queues
    api = CloudApi()
    result = asyncio.run(dispatch_campaign(sqlite_db, "t", channel(), guards=Guards(), transport=api))
    assert result.sent == api.sandbox.accepted == 6
    assert result.waiting == 4 and result.continue_at == release
    # Stopped by the operator (or the budget): nobody's time to wait for, so no continuation is proposed.
    assert Guards().continue_at(None, "paused by the operator") is None  # type: ignore[arg-type]
