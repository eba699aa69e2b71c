"""Each recipient's time zone, for send windows: the audience's column when it has one, else the
zone libphonenumber gives the number (the first, where a number spans several)."""

from __future__ import annotations

from zoneinfo import ZoneInfo, available_timezones

import phonenumbers
import polars as pl
from phonenumbers import timezone as pn_timezone


def _zone_of_number(e164: str) -> str | None:
    try:
        zones = pn_timezone.time_zones_for_number(phonenumbers.parse(e164, None))
    except phonenumbers.NumberParseException:
        return None
    zone = zones[0] if zones else None
    return None if zone in (None, "Etc/Unknown") else zone


def recipient_timezones(frame: pl.DataFrame, column: str = "timezone") -> pl.Series:
    """A `timezone` series for `frame` (which carries `phone_e164`)."""
    by_number = frame["phone_e164"].unique().to_list()
    lookup = {n: _zone_of_number(n) for n in by_number}
    from_number = frame["phone_e164"].replace_strict(lookup, default=None, return_dtype=pl.String)
    if column not in frame.columns:
        return from_number.alias("timezone")
    known = available_timezones()
    given = frame[column].map_elements(lambda z: z if z in known else None, return_dtype=pl.String)
    return given.fill_null(from_number).alias("timezone")


__all__ = ["ZoneInfo", "recipient_timezones"]
