"""The vectorised number path against phonenumbers itself, row for row, over every example number
of every type in every region of libphonenumber's metadata, written every way, and mangled."""

from __future__ import annotations

import json
import random

import phonenumbers
import polars as pl
import pytest
from phonenumbers import PhoneNumberFormat as Fmt

from pipeline.audience.numbers import classify_number
from pipeline.audience.numbers_fast import classify_numbers
from pipeline.audience.phonecorpus import example_numbers, mistake, written
from pipeline.audience.phonemeta import metadata


def _forms(region: str, code: int, nsn: str, rng: random.Random) -> list[tuple[str, str]]:
    number = phonenumbers.parse(f"+{code}{nsn}")
    international = phonenumbers.format_number(number, Fmt.INTERNATIONAL)
    national = phonenumbers.format_number(number, Fmt.NATIONAL)
    own = region if region != "001" else ""
    other = rng.choice(sorted(phonenumbers.SUPPORTED_REGIONS))
    return [
        (f"+{code}{nsn}", ""),
        (international, own),
        ("00" + international[1:], ""),  # no region: our 00 rule
        ("00" + international[1:], own),  # the region's own idea of 00
        ("011 " + international[1:], "US"),
        (national, own),
        (national, ""),  # national without a country
        (national, other),  # national with the wrong country
        (nsn, own),
        (f"{code}{nsn}", own),  # the calling code written without +
        (f"+{code} (0){nsn}", ""),  # a national prefix kept after the code
        (f"+{code}{nsn[:-2]}", own),  # too short
        (f"+{code}{nsn}{rng.randint(0, 999)}", ""),  # too long
        (f" ({national}) ", own),
        (f"++{code}{nsn}", ""),  # phonenumbers strips every leading +
        (f"++{code}{nsn[:-2]}", own),
        (f"+{code} / {nsn}", ""),  # a slash is punctuation like a dot or a dash
        (f"{national[:3]}/{national[3:]}", own),
        (f"tel:{international}", ""),  # phonenumbers skips the scheme, and reads past an extension
        (f"tel:{national}", own),
        (f"tel:00{code}{nsn}", other),  # letters: not read by the 00 rule
        (f"{national} ext. {rng.randint(1, 99999)}", own),
        (f"tel:+{code}{nsn[:-2]} ext. 1", ""),
        (f"+{code}{nsn} ext. {'9' * 21}", ""),  # too long for an extension
        (f"+{code}{nsn[:-1]}Q{nsn[-1]}", ""),  # one letter: dropped
        (f"{nsn[:3]}k{nsn[3:]}", own),
        (f"0{code}{nsn[:-2]}b", own),
        (f"+{code}{nsn[:-1]}x{nsn[-1]}", ""),  # x: an extension follows
        (f"{code}{nsn[:2]}E{nsn[2:]}", own),  # e: scientific notation, to phonenumbers' eyes a number
        (f"{float(f'{code}{nsn}'):.4E}", own),  # a spreadsheet's way
        (f"{float(f'{code}{nsn}'):.5e}".replace(".", ","), ""),
    ]


@pytest.fixture(scope="module")
def corpus() -> list[tuple[str, str]]:
    rng = random.Random(20261125)
    rows: list[tuple[str, str]] = []
    for region, code, nsn, _ in example_numbers():
        rows += _forms(region, code, nsn, rng)
        rows.append(written(region, code, nsn, rng))
        rows += [mistake(region, code, nsn, rng) for _ in range(3)]
    return rows


def test_every_row_agrees_with_phonenumbers(corpus: list[tuple[str, str]]) -> None:
    phones = pl.Series([p for p, _ in corpus], dtype=pl.String)
    countries = pl.Series([c for _, c in corpus], dtype=pl.String)
    got, fallback_rows = classify_numbers(phones, countries, classify_number)
    expected = [classify_number(p, c) for p, c in corpus]
    disagreements = [
        (row, found, want) for row, found, want in zip(corpus, got.iter_rows(), expected, strict=True) if found != want
    ]
    assert disagreements == []  # E.164, region, number type and the reason given for invalid ones
    # The corpus really exercises the vectorised path, on every region, valid and invalid.
    assert fallback_rows < len(corpus) * 0.2
    # (phonenumbers itself attributes MF's and EH's example numbers to GP and MA.)
    reachable = {
        phonenumbers.region_code_for_number(phonenumbers.parse(f"+{c}{n}")) for _, c, n, _ in example_numbers()
    }
    assert {r for _, r, _, why in expected if why is None} == reachable
    assert len(reachable) > len(phonenumbers.SUPPORTED_REGIONS) - 5
    assert sum(why is not None for *_, why in expected) > len(corpus) * 0.2
    kinds = {kind for _, _, kind, _ in expected}
    assert {"mobile", "fixed_line", "fixed_line_or_mobile", "toll_free", "premium_rate", "voip"} <= kinds


def test_reference_is_phonenumbers_except_the_00_rule(corpus: list[tuple[str, str]]) -> None:
    """classify_number is phonenumbers.parse + is_valid_number + number_type + region, plus one
    rule: 00<digits> without + that is not valid as read is read as +<digits>."""
    rule_rows = 0
    for phone, country in corpus:
        ours = classify_number(phone, country)
        region = country if country in phonenumbers.SUPPORTED_REGIONS else None
        try:
            number = phonenumbers.parse(phone, region)
            valid = phonenumbers.is_valid_number(number)
        except phonenumbers.NumberParseException:
            number, valid = None, False
        if valid:
            assert ours == (
                phonenumbers.format_number(number, Fmt.E164),
                phonenumbers.region_code_for_number(number),
                phonenumbers.PhoneNumberType.to_string(phonenumbers.number_type(number)).lower(),
                None,
            ), (phone, country)
        elif ours[3] is None:
            rule_rows += 1
            assert "+" not in phone and phone.strip().lstrip("(").startswith("00"), (phone, country)
            assert ours == classify_number("+" + "".join(ch for ch in phone if ch.isdigit())[2:], "")
    assert rule_rows > 100


@pytest.mark.parametrize(
    ("phone", "country", "expected"),
    [
        ("+54 9 11 1234 5678", "", ("+5491112345678", "AR", "mobile", None)),
        ("011 15 2345 6789", "AR", ("+5491123456789", "AR", "mobile", None)),  # 15 → 9 rewrite
        ("+7 701 123 4567", "", ("+77011234567", "KZ", "mobile", None)),  # +7 shared with RU
        ("+44 7781 123456", "", ("+447781123456", "GG", "mobile", None)),  # a +44 territory
        ("+1 441 370 1234", "", ("+14413701234", "BM", "mobile", None)),  # a +1 territory
        ("0044 7400 123456", "US", ("+447400123456", "GB", "mobile", None)),  # the 00 rule
        (
            "07400 123456",
            "",
            (None, None, None, "needs a country column: not in international format (+…) and no country"),
        ),  # fmt: skip
        ("+999 1234567", "", (None, None, None, "unknown country calling code")),
        ("+44 7400 1234", "", (None, None, None, "too short for GB")),
    ],
)
def test_corner_cases(phone: str, country: str, expected: tuple) -> None:
    got, _ = classify_numbers(pl.Series([phone]), pl.Series([country]), classify_number)
    assert got.row(0) == expected == classify_number(phone, country)


def test_metadata_comes_from_phonenumbers() -> None:
    meta = metadata()
    assert {r.region for r in meta.regions.values()} == set(phonenumbers.SUPPORTED_REGIONS) | {"001"}
    for code, keys in meta.by_code.items():
        assert meta.regions[keys[0]].region == phonenumbers.region_code_for_country_code(code)
    gb = meta.regions["GB"]
    assert gb.country_code == 44 and gb.national_prefix is not None and gb.mobile is not None
    # Every pattern compiles in Polars' regex engine (a metadata upgrade with new syntax fails here).
    patterns = []
    for r in meta.regions.values():
        descs = [d for d in (r.fixed_line, r.mobile, *(d for _, d in r.special)) if d]
        patterns += [p for p in (r.general, r.international_prefix, r.national_prefix, r.leading_digits) if p]
        patterns += [d.pattern for d in descs]
    frame = pl.DataFrame({"x": ["0123456789"]})
    frame.select(pl.col("x").str.contains(p).alias(str(i)) for i, p in enumerate(patterns))
    assert len(patterns) > 1000


def test_empty_input() -> None:
    got, fallback_rows = classify_numbers(
        pl.Series([], dtype=pl.String), pl.Series([], dtype=pl.String), classify_number
    )
    assert got.height == 0 and fallback_rows == 0 and got.columns == ["phone_e164", "region", "number_type", "_invalid"]


def test_metadata_is_cached_per_phonenumbers_version_and_a_bad_cache_is_rebuilt(tmp_path, monkeypatch) -> None:
    from pipeline.audience import phonemeta

    monkeypatch.setenv("CAMPAIGN_CACHE_DIR", str(tmp_path / "cache"))
    built = phonemeta.build_metadata()
    try:
        phonemeta.metadata.cache_clear()
        assert phonemeta.metadata() == built  # built, and written
        path = phonemeta.cache_path()
        assert path.parent == tmp_path / "cache" and phonenumbers.__version__ in path.name and path.exists()
        phonemeta.metadata.cache_clear()
        assert phonemeta.metadata() == built  # read back: the same, field for field
        path.write_text('{"regions": [{"key": "GB"', encoding="utf-8")  # cut short
        phonemeta.metadata.cache_clear()
        assert phonemeta.metadata() == built
        assert len(json.loads(path.read_text(encoding="utf-8"))["regions"]) == len(built.regions)  # rewritten whole
        monkeypatch.setenv("CAMPAIGN_CACHE_DIR", "/proc/no-such-dir")  # cannot be written
        phonemeta.metadata.cache_clear()
        assert phonemeta.metadata() == built
    finally:
        phonemeta.metadata.cache_clear()


def test_the_interpreter_settings_changed_while_classifying_are_put_back() -> None:
    import gc
    import sys

    switch = sys.getswitchinterval()
    phones = pl.Series(["+44 7400 123456", "tel: +44 7400 12345x", "n/a"], dtype=pl.String)
    got, fallback_rows = classify_numbers(phones, pl.Series(["", "", ""], dtype=pl.String), classify_number)
    assert got["phone_e164"].to_list()[0] == "+447400123456" and fallback_rows == 2
    assert gc.isenabled() and sys.getswitchinterval() == switch
    # ... also when classifying fails.
    def broken(phone: str, country: str) -> tuple:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        classify_numbers(phones, pl.Series(["", "", ""], dtype=pl.String), broken)
    assert gc.isenabled() and sys.getswitchinterval() == switch


def test_classifications_in_two_threads_at_once_put_the_settings_back_when_the_last_ends() -> None:
    """Preparation classifies two batches at once: the first to end must not turn the collector
    back on under the other, and the last one out puts both settings back."""
    import gc
    import sys
    import threading

    switch = sys.getswitchinterval()
    first_inside, first_go = threading.Event(), threading.Event()
    seen: list[tuple[bool, float]] = []

    def held(phone: str, country: str) -> tuple:  # the first classification, held open until told
        first_inside.set()
        first_go.wait(timeout=10)
        return classify_number(phone, country)

    phones, countries = pl.Series(["n/a"], dtype=pl.String), pl.Series([""], dtype=pl.String)
    first = threading.Thread(target=classify_numbers, args=(phones, countries, held))
    first.start()

    def second(phone: str, country: str) -> tuple:  # runs while the first ends
        first_inside.wait(timeout=10)
        first_go.set()
        first.join(timeout=10)
        seen.append((gc.isenabled(), sys.getswitchinterval()))
        return classify_number(phone, country)

    try:
        got, fallback_rows = classify_numbers(phones, countries, second)
    finally:
        first_go.set()
        first.join(timeout=10)
    assert fallback_rows == 1 and got["phone_e164"].to_list() == [None]
    assert seen == [(False, seen[0][1])] and seen[0][1] != switch  # the first one out left them alone
    assert gc.isenabled() and sys.getswitchinterval() == switch
