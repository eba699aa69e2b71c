"""Each recipient's time zone, for send windows and send-at times: the audience's column when it has one, else
the zone libphonenumber gives the number, and where it gives several, the principal one of them.

libphonenumber places only fixed lines (and mobiles of a few countries) by their prefix; a Russian or Australian
mobile gets every zone of its calling code (+7 916: 16 zones from Kaliningrad to Kamchatka, with Kazakhstan's).
The first of them in alphabetical order (Asia/Almaty for Moscow, Australia/Adelaide for Sydney) sent 10:00
messages at 08:00 Moscow time. The outbox keeps one zone per message (pipeline/dispatch/schedule.py reads it), so
the zone chosen is the country's principal one: its capital's or its most populous, where most recipients are.
What remains imprecise: a recipient elsewhere in a country spanning zones (a Vladivostok mobile, a Perth one) is
messaged in Moscow's or Sydney's hours; an audience `timezone` column (or a city's zone in it) is what fixes that.
"""

from __future__ import annotations

from functools import cache
from zoneinfo import ZoneInfo, available_timezones

import phonenumbers
import polars as pl
from phonenumbers import timezone as pn_timezone

# Where libphonenumber gives a number several zones, the first of these among them (earlier wins): each is its
# country's capital or most populous zone; tests/audience/test_timezones.py checks that every set of zones in
# libphonenumber's data that spans different UTC offsets holds one.
PRINCIPAL_ZONES = (
    "Europe/Moscow",  # +7: Russia (and Abkhazia's +7 840, which keeps Moscow time)
    "Asia/Almaty",  # +7 7: Kazakhstan
    "America/Mexico_City", "America/New_York",  # +52, +1 (the whole plan)
    "America/Anchorage", "America/St_Johns", "America/Phoenix", "America/North_Dakota/Center", "America/Boise",
    "America/Sao_Paulo", "America/Guayaquil", "America/Godthab",
    "Australia/Sydney", "Australia/Perth",  # +61 mobiles; Western and South Australia's shared prefixes
    "Pacific/Auckland", "Asia/Jakarta", "Asia/Makassar", "Asia/Ulaanbaatar", "Africa/Kinshasa",
    "Europe/London", "Europe/Madrid", "Europe/Lisbon", "Europe/Oslo",
    "Pacific/Tarawa", "Pacific/Tahiti", "Pacific/Ponape", "Indian/Reunion",
)
_RANK = {name: rank for rank, name in enumerate(PRINCIPAL_ZONES)}
# Regions that share a calling code with a larger one and whose numbers libphonenumber gives the larger one's
# zones too (a Kazakh mobile gets all of +7's): their own principal zone comes first.
REGION_ZONES = {"KZ": "Asia/Almaty", "YT": "Indian/Mayotte"}


@cache
def principal_zone(zones: tuple[str, ...], region: str | None = None) -> str | None:
    """The zone to send by for a number of `region` libphonenumber places in `zones` (None for none or
    Etc/Unknown)."""
    known = sorted(z for z in zones if z != "Etc/Unknown")
    own = REGION_ZONES.get(region or "")
    if own in known:
        return own
    # Not ranked: zones of one offset (Europe/Rome and Europe/Vatican), where any of them gives the same hours.
    return min(known, key=lambda z: _RANK.get(z, len(_RANK)), default=None)


def _zone_of_number(e164: str) -> str | None:
    try:
        number = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return None
    zones = pn_timezone.time_zones_for_number(number)
    return principal_zone(tuple(zones), phonenumbers.region_code_for_number(number))


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


__all__ = ["ZoneInfo", "principal_zone", "recipient_timezones"]
