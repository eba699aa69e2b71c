"""Which zone a number gets when libphonenumber gives it several (pipeline/audience/timezones.py): the principal
one of its country, never the alphabetically first (Asia/Almaty for a Moscow mobile sent 10:00 at 08:00)."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import phonenumbers
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from phonenumbers import PhoneMetadata
from phonenumbers.tzdata import TIMEZONE_DATA

from pipeline.audience import timezones
from pipeline.audience.numbers import classify_number
from pipeline.audience.numbers_fast import classify_numbers
from pipeline.audience.numberzones import zone_keys
from pipeline.audience.phonecorpus import example_numbers
from pipeline.audience.phonemeta import TYPE_NAMES
from pipeline.audience.timezones import PRINCIPAL_ZONES, _zone_of_number, recipient_timezones


def test_a_number_placed_in_several_zones_gets_its_countrys_principal_one() -> None:
    numbers = {
        "+79161234567": "Europe/Moscow",  # libphonenumber: 16 zones, Asia/Almaty first
        "+61412345678": "Australia/Sydney",  # 8 zones, Australia/Adelaide first
        "+77012345678": "Asia/Almaty",  # Kazakhstan shares +7 and gets its 16 zones too
        "+262639012345": "Indian/Mayotte",  # Mayotte shares +262 with Réunion
        "+14155552671": "America/Los_Angeles",  # placed by its area code: one zone, as before
    }
    frame = pl.DataFrame({"phone_e164": list(numbers)})
    assert recipient_timezones(frame).to_list() == list(numbers.values())


def _offsets(zone: str) -> tuple[object, ...]:
    return tuple(ZoneInfo(zone).utcoffset(datetime(2026, month, 1, tzinfo=UTC)) for month in (1, 7))


def test_every_set_of_zones_spanning_offsets_in_libphonenumbers_data_names_a_principal_zone() -> None:
    # A new libphonenumber that places numbers in an unranked set of zones fails here, not at 3 a.m. somewhere.
    unranked = [
        zones for zones in TIMEZONE_DATA.values()
        if len({_offsets(z) for z in zones}) > 1 and not set(zones) & set(PRINCIPAL_ZONES)
    ]  # fmt: skip
    assert unranked == []


# The vectorised lookup (pipeline/audience/numberzones.py) against the per-number way it replaced, which stays in
# timezones.py as the reference: phonenumbers.parse + time_zones_for_number + region_code_for_number + principal_zone.


def _lengths(code: int) -> list[int]:
    region = phonenumbers.region_code_for_country_code(code)
    meta = (PhoneMetadata.metadata_for_nongeo_region(code) if region == "001"
            else PhoneMetadata.metadata_for_region(region))  # fmt: skip
    return [n for n in meta.general_desc.possible_length if n > 0] if meta else []


def _code_of(prefix: str) -> int:
    return next(int(prefix[:n]) for n in (1, 2, 3) if int(prefix[:n]) in phonenumbers.COUNTRY_CODE_TO_REGION_CODE)


def _corpus(per_example: int, per_prefix: int, seed: int) -> list[str]:
    """libphonenumber's example number of every type in every region (and non-geographic code), then the same
    with random digits after a random part of it; and numbers starting with every prefix of its time zone data (every
    area it places); all at the lengths the calling code's numbers can have."""
    rng = random.Random(seed)
    numbers = []
    for _, code, nsn, _ in example_numbers():
        lengths = _lengths(code) or [len(nsn)]
        numbers.append(f"+{code}{nsn}")
        for _ in range(per_example):
            size = len(nsn) if rng.random() < 0.5 else rng.choice(lengths)
            keep = rng.randint(max(1, min(size, len(nsn)) - 6), min(size, len(nsn)))
            numbers.append(f"+{code}{nsn[:keep]}{''.join(rng.choices('0123456789', k=size - keep))}")
    for prefix in TIMEZONE_DATA:
        code = _code_of(prefix)
        for size in rng.choices(_lengths(code), k=per_prefix):
            digits = prefix.removeprefix(str(code))
            numbers.append(f"+{prefix}{''.join(rng.choices('0123456789', k=max(0, size - len(digits))))}")
    return list(dict.fromkeys(numbers))


def _accepted(numbers: list[str]) -> pl.DataFrame:
    """The valid ones as the audience stage accepts them: phone_e164, region and number_type."""
    found, _ = classify_numbers(pl.Series(numbers, dtype=pl.String), pl.Series([""] * len(numbers)), classify_number)
    return found.filter(pl.col("phone_e164").is_not_null()).drop("_invalid")


def _disagreements(frame: pl.DataFrame) -> list[tuple[str, str | None, str | None]]:
    got = recipient_timezones(frame).to_list()
    numbers = frame["phone_e164"].to_list()
    return [(n, z, _zone_of_number(n)) for n, z in zip(numbers, got, strict=True) if z != _zone_of_number(n)]


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return _corpus(30, 10, 20261208)


def test_every_number_of_a_large_corpus_gets_the_zone_the_per_number_way_gives(corpus: list[str]) -> None:
    assert len(corpus) > 50_000
    assert _disagreements(pl.DataFrame({"phone_e164": corpus})) == []  # classified here
    accepted = _accepted(corpus)
    assert _disagreements(accepted) == []  # classified by the audience stage
    # The corpus reaches every region with every kind of number, and the three ways phonenumbers places them.
    assert accepted.height > 25_000
    regions = {phonenumbers.region_code_for_number(phonenumbers.parse(f"+{c}{n}")) for _, c, n, _ in example_numbers()}
    assert regions <= set(accepted["region"])
    assert set(accepted["number_type"]) == {name for value, name in TYPE_NAMES.items() if value != 99}
    keys = zone_keys(accepted).drop_nulls()
    assert (keys > 0).sum() > 5_000 and (keys < 0).sum() > 5_000  # by prefix, by calling code
    assert recipient_timezones(accepted).null_count() > 100  # valid, in no zone libphonenumber knows (+800, +979)


ZONED = st.builds(
    lambda code, digits: f"+{code}{digits}",
    st.sampled_from(sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE)),
    st.text("0123456789", max_size=17),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(numbers=st.lists(st.one_of(ZONED, st.text("+0123456789 ", max_size=20)), min_size=1, max_size=60))
def test_any_digits_after_a_calling_code_get_the_zone_the_per_number_way_gives(numbers: list[str]) -> None:
    assert _disagreements(pl.DataFrame({"phone_e164": numbers}, schema={"phone_e164": pl.String})) == []
    assert _disagreements(_accepted(numbers)) == []


ODD = ["", "+", "+0", "+00447400123456", "+999 1234567", "+44 7400 1234", "+447400123456789012", "447400123456",
       "00447400123456", "07400 123456", "n/a", "+44 7400 12345A", "4.47400E+11", "+" + "4" * 300]  # fmt: skip
# Odd, and still read by phonenumbers: letters as on a phone's keypad, a full-width +.
READ = {"+1-800-FLOWERS": "America/New_York", "\uff0b447400123456": "Europe/London"}


def test_invalid_and_odd_numbers_get_no_zone() -> None:
    frame = pl.DataFrame({"phone_e164": [*ODD, *READ, None]}, schema={"phone_e164": pl.String})
    assert _disagreements(frame) == []
    assert recipient_timezones(frame).to_list() == [None] * len(ODD) + list(READ.values()) + [None]


def test_numbers_written_with_a_plus_are_looked_up_without_phonenumbers_per_number(
    corpus: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[str] = []
    reference = timezones._zone_of_number
    monkeypatch.setattr(timezones, "_zone_of_number", lambda n: asked.append(n) or reference(n))
    frame = pl.DataFrame({"phone_e164": [*corpus[:1000], "00447400123456"]})
    assert recipient_timezones(frame).null_count() < 1000
    assert asked == ["00447400123456"]  # without a +: the 00 rule must not read it
