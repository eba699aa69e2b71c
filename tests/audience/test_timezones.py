"""Which zone a number gets when libphonenumber gives it several (pipeline/audience/timezones.py): the principal
one of its country, never the alphabetically first (Asia/Almaty for a Moscow mobile sent 10:00 at 08:00)."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import polars as pl
from phonenumbers.tzdata import TIMEZONE_DATA

from pipeline.audience.timezones import PRINCIPAL_ZONES, recipient_timezones


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
