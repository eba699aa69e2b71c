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

from pipeline.audience.numbers import classify_number
from pipeline.audience.numbers_fast import classify_numbers
from pipeline.audience.numberzones import zone_keys, zones_for_key

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
    """One number's zone the per-number way: the reference the vectorised path agrees with
    (tests/audience/test_timezones.py), and what it asks for inputs not written with a +."""
    try:
        number = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return None
    zones = pn_timezone.time_zones_for_number(number)
    return principal_zone(tuple(zones), phonenumbers.region_code_for_number(number))


def _principal_zones(numbers: pl.DataFrame) -> pl.Series:
    """The zone of each row of `numbers` (phone_e164, region, number_type as numbers_fast gives them)."""
    keyed = numbers.select(
        zone_keys(numbers).alias("_key"),
        # principal_zone reads the region only to find its REGION_ZONES entry
        pl.when(pl.col("region").is_in(list(REGION_ZONES))).then(pl.col("region")).alias("_own"),
    )
    pairs = keyed.unique()  # a few thousand at most: each zone list once, with the regions that matter
    zones = [principal_zone(zones_for_key(key), own) for key, own in pairs.iter_rows()]
    table = pairs.with_columns(pl.Series("zone", zones, dtype=pl.String))
    found = keyed.join(table, on=["_key", "_own"], how="left", nulls_equal=True, maintain_order="left")
    return found["zone"]


def _zones_by_number(phones: pl.Series) -> pl.Series:
    """The zone of each number as phonenumbers.parse(number, None) reads it, once per distinct number."""
    distinct = phones.drop_nulls().unique()
    # Written with a +, the vectorised classifier reads a number as parse(number, None) does; without one its
    # 00 rule (numbers.classify_number) could read what parse refuses, so phonenumbers answers (none in an audience).
    plus = distinct.str.contains("+", literal=True)
    read, odd = distinct.filter(plus), distinct.filter(~plus)
    found, _ = classify_numbers(read, pl.repeat("", len(read), dtype=pl.String, eager=True), classify_number)
    lookup = pl.concat([
        pl.DataFrame({"phone": read, "zone": _principal_zones(found)}),
        pl.DataFrame({"phone": odd, "zone": [_zone_of_number(n) for n in odd]}, schema={"phone": pl.String,
                                                                                         "zone": pl.String}),
    ])  # fmt: skip
    return phones.to_frame("phone").join(lookup, on="phone", how="left", maintain_order="left")["zone"]


def recipient_timezones(frame: pl.DataFrame, column: str = "timezone") -> pl.Series:
    """A `timezone` series for `frame` (which carries `phone_e164`). Its `region` and `number_type`, when it
    carries them (the audience stage's accepted rows do), are taken as the classification of `phone_e164`."""
    if {"region", "number_type"} <= set(frame.columns):
        from_number = _principal_zones(frame.select("phone_e164", "region", "number_type"))
    else:
        from_number = _zones_by_number(frame["phone_e164"])
    from_number = from_number.alias("timezone")
    if column not in frame.columns:
        return from_number
    given = frame[column].cast(pl.String)
    known = given.is_in(sorted(available_timezones())).fill_null(False)
    return given.zip_with(known, from_number).alias("timezone")


__all__ = ["ZoneInfo", "principal_zone", "recipient_timezones"]
