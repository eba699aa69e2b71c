"""validate_numbers and the blocked-country policy: each rule, its precedence, and agreement with
phonenumbers called directly."""

from __future__ import annotations

import random
import re
from pathlib import Path

import phonenumbers
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from phonenumbers import PhoneNumberFormat, PhoneNumberType

import pipeline.audience.numbers as numbers
from pipeline.audience.numbers import TYPE_NAMES, validate_numbers
from pipeline.audience.policy import BlockedPolicy, PolicyError, blocked_policy, load_policy_file
from pipeline.records import REJECTS_SCHEMA

GB_MOBILE = "+447400123456"
GB_LANDLINE = "+442079460000"


def audience(rows: list[tuple], columns: tuple[str, ...] = ("phone", "country", "opt_in")) -> pl.DataFrame:
    frame = pl.DataFrame([list(r) for r in rows], schema=dict.fromkeys(columns, pl.String), orient="row")
    return frame.with_row_index("row_number", offset=2).with_columns(pl.col("row_number").cast(pl.Int64))


def run(frame: pl.DataFrame, **kwargs) -> tuple[pl.DataFrame, pl.DataFrame]:
    options = {"channel": "whatsapp", "category": "marketing", "policy": blocked_policy("whatsapp")}
    options.update(kwargs)
    return validate_numbers(frame, **options)


def reasons(rejects: pl.DataFrame) -> dict[int, tuple[str, str]]:
    return {row: (reason, detail) for row, reason, detail in rejects.rows()}


@pytest.mark.parametrize(
    ("phone", "country"),
    [
        ("+447400123456", ""),
        ("+44 7400 123456", ""),
        ("+44-7400-123-456", None),
        ("+44.7400.123.456", ""),
        ("+44 (0) 7400 123456", ""),
        ("0044 7400 123456", "GB"),  # 00 is GB's international prefix
        ("0044 7400 123456", ""),  # no country: 00 means international
        ("0044 7400 123456", "US"),  # US dials 011; the number is still meant as +44
        ("07400 123456", "GB"),
        ("07400 123456", " gb "),
        ("'+447400123456", ""),  # a spreadsheet's text marker
    ],
)
def test_accepted_formats(phone: str, country: str | None) -> None:
    accepted, rejects = run(audience([(phone, country, "yes")]))
    assert rejects.height == 0, rejects.rows()
    assert accepted.select("phone_e164", "region", "number_type").row(0) == (GB_MOBILE, "GB", "mobile")


def test_output_columns_and_schemas() -> None:
    frame = audience(
        [(GB_MOBILE, "GB", "yes", "Ann"), ("12", "GB", "yes", "Bo")], ("phone", "country", "opt_in", "name")
    )
    accepted, rejects = run(frame)
    assert accepted.columns == [*frame.columns, "phone_e164", "region", "number_type"]
    assert rejects.schema == pl.Schema(REJECTS_SCHEMA)
    assert accepted["name"].to_list() == ["Ann"]


def test_national_number_without_country_needs_one() -> None:
    frame = audience([("07400 123456", "", "yes")], ("phone", "country", "opt_in"))
    _, rejects = run(frame)
    assert rejects.row(0)[1] == "invalid_number" and "needs a country" in rejects.row(0)[2]
    _, rejects = run(audience([("07400 123456", "yes")], ("phone", "opt_in")))
    assert "needs a country" in rejects.row(0)[2]
    accepted, _ = run(audience([("07400 123456", "yes")], ("phone", "opt_in")), default_country="GB")
    assert accepted["phone_e164"].to_list() == [GB_MOBILE]


def test_invalid_numbers_say_why() -> None:
    frame = audience(
        [
            ("+44 7400 12", "", "yes"),
            ("+44 1000 000000", "", "yes"),
            ("n/a", "GB", "yes"),
            ("07400 123456", "UK", "yes"),
            ("4.474E+11", "", "yes"),
            ("=1+1", "", "yes"),
            ("+999 1234567", "", "yes"),
        ]
    )
    _, rejects = run(frame)
    got = reasons(rejects)
    assert {reason for reason, _ in got.values()} == {"invalid_number"}
    assert got[2][1].startswith("too short")
    assert got[3][1] == "not a valid number for GB"
    assert got[4][1] == "contains letters"
    assert "unknown country 'UK'" in got[5][1] and "GB" in got[5][1]
    assert "scientific notation" in got[6][1]
    assert got[7][1] == "not a phone number"
    assert "calling code" in got[8][1]


def test_landline_is_not_mobile_but_fixed_line_or_mobile_is_accepted() -> None:
    accepted, rejects = run(audience([(GB_LANDLINE, "", "yes"), ("+1 201-555-0123", "", "yes")]))
    assert reasons(rejects) == {2: ("not_mobile", "number type is fixed_line, not mobile")}
    assert accepted.select("region", "number_type").row(0) == ("US", "fixed_line_or_mobile")


def test_blocked_countries_default_and_override() -> None:
    frame = audience(
        [("+98 912 345 6789", "", "yes"), ("+49 1512 3456789", "", "yes"), ("+7 978 123 45 67", "", "yes")]
    )
    _, rejects = run(frame)
    got = reasons(rejects)
    assert got[2][0] == "blocked_country" and "Iran (IR)" in got[2][1]
    assert 3 not in got
    assert got[4][0] == "blocked_country" and "+7978" in got[4][1]

    # An override replaces the country list (Iran allowed, Germany blocked); prefixes stay.
    _, rejects = run(frame, policy=blocked_policy("whatsapp", ["DE"]))
    got = reasons(rejects)
    assert set(got) == {3, 4} and got[3][0] == "blocked_country" and "DE" in got[3][1]

    accepted, rejects = run(frame, policy=blocked_policy("sms"))
    assert rejects.height == 0 and accepted.height == 3


def test_opt_in_spellings_and_bad_values() -> None:
    good = ["yes", "YES", " y ", "N", "true", "False", "1", "0", "no"]
    bad = ["maybe", "", None, "2", "ja"]
    rows = [(f"+4474001234{i:02d}", "", value) for i, value in enumerate(good + bad)]
    accepted, rejects = run(audience(rows), category="utility")
    assert accepted.height == len(good)
    got = reasons(rejects)
    assert set(got) == set(range(2 + len(good), 2 + len(good) + len(bad)))
    assert {reason for reason, _ in got.values()} == {"bad_row"}
    assert "'maybe'" in got[2 + len(good)][1]
    assert got[2 + len(good) + 1][1] == "opt_in is empty"


def test_no_opt_in_only_for_marketing() -> None:
    frame = audience([(GB_MOBILE, "", "no")])
    _, rejects = run(frame, category="marketing")
    assert reasons(rejects)[2][0] == "no_opt_in"
    accepted, rejects = run(frame, category="utility")
    assert accepted.height == 1 and rejects.height == 0


def test_suppressed_numbers_in_any_notation() -> None:
    frame = audience([(GB_MOBILE, "", "yes"), ("+447400123457", "", "yes"), ("+447400123458", "", "yes")])
    accepted, rejects = run(frame, suppressed={"447400123456", "+44 7400 123457"})
    assert reasons(rejects) == {
        2: ("suppressed", "on the whatsapp suppression list (opted out earlier)"),
        3: ("suppressed", "on the whatsapp suppression list (opted out earlier)"),
    }
    assert accepted["row_number"].to_list() == [4]


def test_duplicates_first_accepted_row_wins() -> None:
    frame = audience(
        [
            ("07400 123456", "GB", "no"),  # 2: no opt-in, so not the winner
            ("+44 7400 123456", "", "yes"),  # 3: first accepted
            ("0044 7400 123456", "", "yes"),  # 4: duplicate of 3
            ("+447400123456", "", "y"),  # 5: duplicate of 3
        ]
    )
    accepted, rejects = run(frame)
    assert accepted["row_number"].to_list() == [3]
    assert reasons(rejects) == {
        2: ("no_opt_in", "opt_in is 'no' and the campaign is marketing"),
        4: ("duplicate", "same number as row 3"),
        5: ("duplicate", "same number as row 3"),
    }


def test_reason_precedence() -> None:
    frame = audience(
        [
            ("12", "GB", "maybe"),  # bad opt_in beats invalid number
            (GB_LANDLINE.replace("0000", "1"), "", "no"),  # invalid beats no_opt_in
            (GB_LANDLINE, "", "no"),  # not_mobile beats no_opt_in
            ("+98 912 345 6789", "", "no"),  # blocked beats no_opt_in
            ("+447400111111", "", "no"),  # no_opt_in beats suppressed
            ("+447400222222", "", "yes"),  # suppressed beats duplicate
            ("+447400222222", "", "yes"),
        ]
    )
    _, rejects = run(frame, suppressed={"+447400111111", "+447400222222"})
    assert [reason for _, reason, _ in rejects.rows()] == [
        "bad_row", "invalid_number", "not_mobile", "blocked_country", "no_opt_in", "suppressed", "suppressed",
    ]  # fmt: skip


def test_every_row_lands_exactly_once_and_order_is_kept() -> None:
    rng = random.Random(7)
    pool = [GB_MOBILE, GB_LANDLINE, "+98 912 345 6789", "12", "+49 1512 3456789", "+33 6 12 34 56 78"]
    rows = [(rng.choice(pool), "", rng.choice(["yes", "no", "maybe"])) for _ in range(300)]
    accepted, rejects = run(audience(rows))
    seen = sorted(accepted["row_number"].to_list() + rejects["row_number"].to_list())
    assert seen == list(range(2, 302))
    assert accepted["row_number"].is_sorted() and rejects["row_number"].is_sorted()
    assert accepted["phone_e164"].is_unique().all()


def test_empty_frame() -> None:
    accepted, rejects = run(audience([]))
    assert accepted.height == 0 and rejects.height == 0
    assert "phone_e164" in accepted.columns


def test_missing_opt_in_column_is_an_error() -> None:
    with pytest.raises(ValueError, match="opt_in"):
        run(audience([(GB_MOBILE,)], ("phone",)))


def test_phonenumbers_is_called_only_for_unusual_inputs_once_per_unique_pair(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str]] = []
    real = numbers.classify_number

    def counting(phone: str, country: str):
        calls.append((phone, country))
        return real(phone, country)

    monkeypatch.setattr(numbers, "classify_number", counting)
    # Plain numbers take the vectorised path: phonenumbers is not called at all.
    rows = [(f"+4474001234{i % 10:02d}", "GB" if i % 2 else "", "yes") for i in range(1000)]
    accepted, rejects = run(audience(rows))
    assert calls == []
    assert accepted.height == 10 and rejects.height == 990
    # So are numbers in a "tel:" URI or with an " ext. 7" extension: phonenumbers reads past both.
    rows = [(f"tel:+4474001234{i % 10:02d}", "", "yes") for i in range(50)]
    rows += [(f"+44 7400 1234{i % 10:02d} ext. 7", "GB", "yes") for i in range(50)]
    rows += [("tel:+447400", "", "yes"), ("0044 7400 123456 ext. 7", "US", "yes")]
    accepted, rejects = run(audience(rows))
    assert calls == []
    assert accepted.height == 10
    assert rejects.filter(pl.col("reason") == "invalid_number")["detail"].to_list() == ["contains letters"] * 2
    # Other letters (a vanity number, other ways to write an extension) are phonenumbers' own
    # business, once per unique pair.
    rows = [(f"+44 7400 1234{i % 5:02d} x 7", "GB", "yes") for i in range(100)]
    accepted, rejects = run(audience(rows))
    assert len(calls) == len(set(calls)) == 5
    assert accepted["phone_e164"].to_list() == [f"+4474001234{i:02d}" for i in range(5)]


def _sample_numbers(count: int) -> list[tuple[str, str]]:
    """(phone as written, country): valid-looking and random numbers over many regions."""
    rng = random.Random(20261125)
    regions = sorted(phonenumbers.SUPPORTED_REGIONS)
    out: list[tuple[str, str]] = []
    while len(out) < count:
        region = rng.choice(regions)
        kind = rng.choice([PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE])
        example = phonenumbers.example_number_for_type(region, kind)
        if example is None:
            continue
        nsn = phonenumbers.national_significant_number(example)
        nsn = nsn[:-3] + "".join(rng.choice("0123456789") for _ in range(3 + rng.choice([-1, 0, 0, 0, 1])))
        number = phonenumbers.parse(f"+{example.country_code}{nsn}")
        if rng.random() < 0.5:
            out.append((phonenumbers.format_number(number, PhoneNumberFormat.INTERNATIONAL), ""))
        else:
            out.append((phonenumbers.format_number(number, PhoneNumberFormat.NATIONAL), region))
    return out


def test_agrees_with_phonenumbers_called_directly() -> None:
    samples = _sample_numbers(400)
    frame = audience([(phone, country, "yes") for phone, country in samples])
    accepted, rejects = run(frame, policy=BlockedPolicy("whatsapp"))  # no entries: nothing blocked
    by_row = {r["row_number"]: r for r in accepted.iter_rows(named=True)}
    rejected = reasons(rejects)
    assert len(by_row) + len(rejected) == len(samples)
    first_row: dict[str, int] = {}
    for row_number, (phone, country) in enumerate(samples, start=2):
        parsed = phonenumbers.parse(phone, country or None)
        if not phonenumbers.is_valid_number(parsed):
            assert rejected[row_number][0] == "invalid_number", (phone, country)
            continue
        e164 = phonenumbers.format_number(parsed, PhoneNumberFormat.E164)
        kind = TYPE_NAMES[phonenumbers.number_type(parsed)]
        if kind not in ("mobile", "fixed_line_or_mobile"):
            assert rejected[row_number] == ("not_mobile", f"number type is {kind}, not mobile"), (phone, country)
            continue
        if e164 in first_row:
            assert rejected[row_number] == ("duplicate", f"same number as row {first_row[e164]}")
            continue
        first_row[e164] = row_number
        got = by_row[row_number]
        assert (got["phone_e164"], got["region"], got["number_type"]) == (
            e164, phonenumbers.region_code_for_number(parsed), kind,
        ), (phone, country)  # fmt: skip
    # The sample really exercises both outcomes.
    assert len(by_row) > 50 and sum(r == "invalid_number" for r, _ in rejected.values()) > 20


def test_policy_file_rows_and_errors(tmp_path: Path) -> None:
    whatsapp = blocked_policy("whatsapp")
    assert set(whatsapp.countries) == {"KP", "SY", "IR", "CU", "SD", "TR"}
    assert whatsapp.countries["TR"].source.startswith("Chat App FAQ")
    assert {"7978", "7949", "7959"} <= set(whatsapp.prefixes)
    assert whatsapp.reason("+989123456789", "IR") is not None
    assert whatsapp.reason("+79781234567", "RU") is not None
    assert whatsapp.reason("+79121234567", "RU") is None

    bad = tmp_path / "policy.csv"
    bad.write_text("channel,kind,value,name,source,date\nwhatsapp,country,Iran,Iran,x,2026-01-01\n")
    with pytest.raises(PolicyError, match="alpha-2"):
        load_policy_file(bad)
    with pytest.raises(PolicyError, match="alpha-2"):
        blocked_policy("whatsapp", ["Iran"])


def test_policy_file_entries_are_dated_and_sourced() -> None:
    policies = load_policy_file()
    assert {"whatsapp", "chatapp"} <= set(policies)
    for entries in policies.values():
        for entry in entries:
            assert entry.source and re.fullmatch(r"\d{4}-\d{2}-\d{2}", entry.date), entry
    assert not blocked_policy("sms").entries  # a channel the file does not name blocks nothing
    assert blocked_policy("whatsapp").reason("+380621234567", "UA") is not None


@pytest.mark.parametrize("channel", ["whatsap", "WhatsApp", " whatsapp", "", "none"])
def test_an_unknown_channel_is_an_error_not_an_empty_policy(channel: str) -> None:
    # A typo would otherwise find no entries and block nothing (review: --channel whatsap sent to Iran).
    with pytest.raises(PolicyError, match="unknown channel"):
        blocked_policy(channel)
    with pytest.raises(PolicyError, match="unknown channel"):
        blocked_policy(channel, ["IR"])


def test_the_policy_knows_every_channel_of_the_registry(tmp_path: Path) -> None:
    from pipeline.channels import available_channels

    for channel in available_channels():
        blocked_policy(channel)  # none raises
    typo = tmp_path / "policy.csv"
    typo.write_text("channel,kind,value,name,source,date\nwhatsap,country,IR,Iran,x,2026-01-01\n")
    with pytest.raises(PolicyError, match="line 2: unknown channel 'whatsap'"):
        load_policy_file(typo)


# --- dedupe across batches --------------------------------------------------------------------------------------


def _candidates(keys: list[str | None], first_row: int) -> pl.DataFrame:
    return pl.DataFrame(
        {"row_number": range(first_row, first_row + len(keys)), "phone_e164": keys},
        schema={"row_number": pl.Int64, "phone_e164": pl.String},
    )


def _in_batches(keys: list[str | None], sizes: list[int]) -> tuple[list[int], dict[int, str], numbers.Carry]:
    """drop_duplicates over `keys` (rows 2, 3, …) cut into batches of `sizes`: (accepted rows, duplicate row ->
    detail, the carry)."""
    carry, accepted, duplicates, start = numbers.Carry(), [], {}, 0
    for size in sizes:
        batch = _candidates(keys[start : start + size], start + 2)
        winners, rejects = numbers.drop_duplicates(batch, carry)
        assert winners["row_number"].is_sorted() and rejects["row_number"].is_sorted()
        accepted += winners["row_number"].to_list()
        duplicates |= {row: detail for row, reason, detail in rejects.rows() if reason == "duplicate"}
        start += size
    assert start == len(keys)
    return accepted, duplicates, carry


def _one_pass(keys: list[str | None]) -> tuple[list[int], dict[int, str]]:
    first: dict[str | None, int] = {}
    for row, key in enumerate(keys, start=2):
        first.setdefault(key, row)
    accepted = sorted(first.values())
    duplicates = {row: f"same number as row {first[key]}" for row, key in enumerate(keys, start=2) if first[key] != row}
    return accepted, duplicates


def test_a_duplicate_many_batches_apart_names_the_first_row_and_the_carry_stays_compact() -> None:
    rng = random.Random(11)
    pool = [f"+4474{rng.randrange(10**8):08d}" for _ in range(3_000)]
    keys = [GB_MOBILE, *(rng.choice(pool) for _ in range(5_999)), GB_MOBILE]
    sizes = [150] * 40 + [1]  # the first row's number comes back 40 batches later
    accepted, duplicates, carry = _in_batches(keys, sizes)
    assert (accepted, duplicates) == _one_pass(keys)
    assert duplicates[len(keys) + 1] == "same number as row 2" and 2 in accepted
    # Plain E.164 numbers are kept as Int64 with their first row (16 bytes each), in a few sorted runs.
    assert carry.seen == len(set(keys)) and carry.texts.height == 0
    runs = carry.numbers.runs
    assert len(runs) <= 7  # about log2(40 batches) + 1, not one per batch
    for run in runs:
        assert run.schema == pl.Schema({"_key": pl.Int64, "_first": pl.Int64})
        assert run["_key"].is_sorted() and run["_key"].is_unique().all()
    assert pl.concat(runs).estimated_size() == 16 * carry.seen
    assert pl.concat(runs).filter(pl.col("_key") == int(GB_MOBILE[1:]))["_first"].to_list() == [2]


def test_keys_that_are_not_plain_e164_dedupe_the_same_way() -> None:
    odd = ["+0447400123456", "447400123456", "+44 7400 123456", "+1234567890123456789", "abc", "", None]
    rng = random.Random(5)
    keys = [rng.choice([*odd, GB_MOBILE, "+33612345678"]) for _ in range(400)]
    accepted, duplicates, carry = _in_batches(keys, [37] * 10 + [30])
    assert (accepted, duplicates) == _one_pass(keys)
    assert carry.texts.height == len({k for k in keys if k not in (GB_MOBILE, "+33612345678")})
    assert carry.numbers.height == len({GB_MOBILE, "+33612345678"} & set(keys))


@settings(max_examples=100, deadline=None)
@given(
    keys=st.lists(st.sampled_from([GB_MOBILE, "+33612345678", "+1", "+0447400123456", "abc", "", None]), max_size=60),
    cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=8),
)
def test_any_split_into_batches_dedupes_as_one_pass(keys: list[str | None], cuts: list[int]) -> None:
    bounds = sorted({0, len(keys), *(c for c in cuts if c <= len(keys))})
    accepted, duplicates, _ = _in_batches(keys, [b - a for a, b in zip(bounds, bounds[1:], strict=False)])
    assert (accepted, duplicates) == _one_pass(keys)


def test_an_address_set_is_normalised_once_when_batches_ask_for_it_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Preparation checks several batches in threads at once; each asks for the capped and suppressed sets
    normalised: the first one works it out, the others wait for it instead of doing the same again."""
    import threading
    import time

    from pipeline.audience import address_sets

    calls: list[int] = []
    real = address_sets.Matcher.of

    def counted(addresses: pl.Series) -> address_sets.Matcher:
        calls.append(len(addresses))
        time.sleep(0.2)  # long enough for the other threads to ask meanwhile
        return real(addresses)

    monkeypatch.setattr(address_sets.Matcher, "of", counted)
    address_sets._set_matcher.cache_clear()
    addresses = frozenset({"+44 7400 123456", "447400123457", f"+1 202 555 {random.randrange(10_000):04d}"})
    start = threading.Barrier(3)
    got: list[list[str]] = []

    def ask() -> None:
        start.wait(timeout=10)
        got.append(address_sets.matcher(addresses).keys())

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    address_sets._set_matcher.cache_clear()
    assert calls == [3] and len(got) == 3 and got[0] == got[1] == got[2]
    assert {"+447400123456", "+447400123457"} <= set(got[0])
