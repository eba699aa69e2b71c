"""phonenumbers.timezone.time_zones_for_number for a column of numbers, vectorised over the library's own data
(phonenumbers.tzdata, read at run time, so an upgrade keeps the two in agreement): each number's zone list, named by
a key that `zones_for_key` turns into the list.

As that function decides: a number of UNKNOWN type (every invalid number) gets Etc/Unknown; a type libphonenumber
does not place by prefix (is_number_type_geographical: a mobile outside a few countries, toll-free, VoIP...) its
calling code's zones; any other the zones of the longest prefix of its E.164 digits in TIMEZONE_DATA, else
Etc/Unknown.
"""

from __future__ import annotations

from functools import cache

import polars as pl
from phonenumbers import COUNTRY_CODE_TO_REGION_CODE, PhoneNumber, is_number_type_geographical
from phonenumbers import timezone as pn_timezone

from pipeline.audience.phonemeta import TYPE_NAMES

# A key is a TIMEZONE_DATA prefix as a number (prefixes start with a calling code, never with 0, so the number
# names one prefix), or a calling code negated for the code's own zones: matching integers is cheaper than slicing
# and hashing strings, once per prefix length.
UNKNOWN_ZONES = (pn_timezone.UNKNOWN_TIMEZONE,)
HEAD = pn_timezone.TIMEZONE_LONGEST_PREFIX  # the digits time_zones_for_number reads
if not 3 <= HEAD <= 18:  # an Int64 holds 18 digits; calling codes have up to 3
    raise RuntimeError(f"phonenumbers.tzdata: TIMEZONE_LONGEST_PREFIX {HEAD} is outside 3..18")


def _by_length(prefixes: list[str]) -> dict[int, list[int]]:
    """Longest first: the first length that matches wins."""
    out: dict[int, list[int]] = {}
    for prefix in prefixes:
        if not prefix.isdigit() or prefix.startswith("0"):  # as an integer it would name another prefix
            raise RuntimeError(f"phonenumbers.tzdata: unexpected prefix {prefix!r}")
        out.setdefault(len(prefix), []).append(int(prefix))
    return {n: sorted(out[n]) for n in sorted(out, reverse=True)}


@cache
def _prefixes() -> dict[int, list[int]]:
    # time_zones_for_number reads no further than HEAD digits.
    return _by_length([p for p in pn_timezone.TIMEZONE_DATA if 0 < len(p) <= HEAD])


@cache
def _calling_codes() -> dict[int, list[int]]:
    return _by_length([str(code) for code in COUNTRY_CODE_TO_REGION_CODE])


@cache
def _geographic() -> list[int]:
    """type * 1000 + calling code, for every (number type, calling code) libphonenumber places by prefix."""
    return sorted(
        value * 1000 + code for value in TYPE_NAMES for code in COUNTRY_CODE_TO_REGION_CODE
        if is_number_type_geographical(value, code)
    )  # fmt: skip


def _longest(prefixes: dict[int, list[int]]) -> pl.Expr:
    """The longest of `prefixes` that _head (a number of _size digits) starts with. A number shorter than a
    prefix length matches none of that length, as phonenumbers' slice past its end matches only its own length."""
    found = []
    for n, numbers in prefixes.items():
        prefix = pl.col("_head") // (pl.col("_scale") // 10**n)
        found.append(pl.when((pl.col("_size") >= n) & prefix.is_in(numbers)).then(prefix))
    return pl.coalesce(found)


def zone_keys(numbers: pl.DataFrame) -> pl.Series:
    """Which zone list phonenumbers gives each row of `numbers`: phone_e164, and number_type as numbers_fast gives
    it (null for an invalid number); null for Etc/Unknown."""
    names = {name: value for value, name in TYPE_NAMES.items() if name != "unknown"}
    digits = pl.col("phone_e164").str.strip_prefix("+").str.slice(0, HEAD)
    # One column a step: the expressions each later step reads many times are computed once.
    return (
        numbers.lazy()
        .select(digits.alias("_digits"),
                pl.col("number_type").replace_strict(names, default=None, return_dtype=pl.Int64).alias("_type"))
        .select(
            "_type",
            pl.when(pl.col("_digits").str.contains(r"^[1-9][0-9]*$"))
            .then(pl.col("_digits").cast(pl.Int64, strict=False)).alias("_head"),
            pl.col("_digits").str.len_bytes().cast(pl.Int64).alias("_size"),
        )
        .with_columns(_scale=pl.lit(10, pl.Int64).pow("_size"))
        .with_columns(_code=_longest(_calling_codes()))  # calling codes are prefix-free: at most one matches
        .select(
            pl.when((pl.col("_type") * 1000 + pl.col("_code")).is_in(_geographic())).then(_longest(_prefixes()))
            .when(pl.col("_type").is_not_null()).then(-pl.col("_code"))
            .alias("_key")
        )
        .collect()["_key"]
    )  # fmt: skip


@cache
def zones_for_key(key: int | None) -> tuple[str, ...]:
    """The zone list a `zone_key` names."""
    if key is None:
        return UNKNOWN_ZONES
    if key < 0:
        # The library's own country-level lookup (it reads the code's prefixes its own way).
        return tuple(pn_timezone._country_level_time_zones_for_number(PhoneNumber(country_code=-key)))
    return tuple(pn_timezone.TIMEZONE_DATA[str(key)])
