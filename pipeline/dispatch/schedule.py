"""When a message may leave, in its recipient's own time zone: send windows (daily hours, or dated slots) and
"send at 10:00 local time"; and when a campaign that left messages waiting can continue.

The guards (policy.py) ask `Window.inside` per message while feeding and again just before a send, so nothing
leaves after a window closes; what waits stays `queued`. `send_at` is decided once, when messages are queued:
each gets its `not_before` (the ledger's pending() skips it until then). The flow schedules the next run at
`continue_at` (flows/continuation.py).
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import polars as pl

from pipeline.spec import SendAt, SendWindow

_ZONES: dict[str, ZoneInfo] = {}


def zone(name: str | None) -> ZoneInfo:
    """The IANA zone `name`; UTC for none or an unknown one (timezones.py already checked the audience's)."""
    key = name or "UTC"
    found = _ZONES.get(key)
    if found is None:
        try:
            found = ZoneInfo(key)
        except (KeyError, ValueError):
            found = ZoneInfo("UTC")
        _ZONES[key] = found
    return found


class Window:
    """A spec's send window: daily local hours, or its dated slots when it lists any."""

    def __init__(self, spec: SendWindow) -> None:
        self.daily = (time.fromisoformat(spec.start), time.fromisoformat(spec.end))
        self.slots = [(s.start, s.end) for s in spec.slots]

    def _slots_at(self, tz: ZoneInfo) -> list[tuple[datetime, datetime]]:
        """The slots as UTC instants for a recipient in `tz` (a naive slot is local wall time)."""
        return [(_instant(a, tz), _instant(b, tz)) for a, b in self.slots]

    def inside(self, tz: ZoneInfo, now: datetime) -> bool:
        if self.slots:
            return any(a <= now < b for a, b in self._slots_at(tz))
        start, end = self.daily
        local = now.astimezone(tz).time()
        return start <= local < end if start <= end else (local >= start or local < end)

    def next_opening(self, tz: ZoneInfo, now: datetime) -> datetime | None:
        """The next instant (UTC) after `now` the window opens for a recipient in `tz`; None when no slot is left."""
        if self.slots:
            return min((a for a, _ in self._slots_at(tz) if a > now), default=None)
        local = now.astimezone(tz)
        opens = datetime.combine(local.date(), self.daily[0], tz)
        if opens <= local:
            opens = datetime.combine(local.date() + timedelta(days=1), self.daily[0], tz)
        return opens.astimezone(UTC)


def _instant(value: datetime, tz: ZoneInfo) -> datetime:
    return (value if value.tzinfo is not None else value.replace(tzinfo=tz)).astimezone(UTC)


def release_times(zones: pl.Series, send_at: SendAt, now: datetime) -> pl.Series:
    """Each recipient's `not_before` (UTC) for "send at `send_at.local_time` local time": today's local time in the
    recipient's zone when it is still ahead or passed less than `late_s` ago (then: now), else tomorrow's."""
    at = time.fromisoformat(send_at.local_time)
    late = timedelta(seconds=send_at.late_s)
    zones = zones.fill_null("UTC")
    by_zone: dict[str, datetime] = {}
    for name in zones.unique().to_list():
        tz = zone(name)
        local = now.astimezone(tz)
        release = datetime.combine(local.date(), at, tz)
        if release <= local - late:
            release = datetime.combine(local.date() + timedelta(days=1), at, tz)
        by_zone[name] = max(release.astimezone(UTC), now)
    return zones.replace_strict(by_zone, return_dtype=pl.Datetime("us", "UTC")).alias("not_before")
