"""The joined regexes (one per kind of pattern, every region's behind its key) answer exactly what
each region's own pattern answers: under the row's own key and under any other region's."""

from __future__ import annotations

import dataclasses
import random
import re

import phonenumbers
import polars as pl
import pytest
from phonenumbers import PhoneMetadata
from phonenumbers import phonenumberutil as util

from pipeline.audience import phonejoin
from pipeline.audience.phonecorpus import example_numbers
from pipeline.audience.phonemeta import TYPE_NAMES, metadata

_ANCHOR = re.compile(r"\(\?-u\)\^\(\?:(.*)\)\$?", re.DOTALL)


def _pairs(draws: int = 3) -> list[tuple[str, str]]:
    """(key, digits): every example number's national number, asked under its own region and
    `draws` others; the same digits with a 0, a 1 or the calling code in front (national and
    trunk prefixes), and one digit shorter or longer (lengths a pattern allows and the metadata
    does not)."""
    rng = random.Random(20261207)
    keys = sorted(metadata().regions)
    own = {r: r for r in phonenumbers.SUPPORTED_REGIONS}
    pairs = []
    for region, code, nsn, _ in example_numbers():
        key = own.get(region, f"+{code}")
        for digits in (nsn, "0" + nsn, "1" + nsn, f"{code}{nsn}", nsn[:-1], nsn + nsn[-1]):
            pairs += [(each, digits) for each in [key, *rng.sample(keys, draws)]]
    return pairs


def _python(key: str, kind: str) -> re.Pattern[str] | None:
    pattern, _ = phonejoin._pattern(metadata().regions[key], kind)
    return None if pattern is None else re.compile(_ANCHOR.fullmatch(pattern).group(1))  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", [*phonejoin.DESCS, "any_special"])
def test_a_whole_number_pattern_matches_as_the_regions_own(kind: str) -> None:
    pairs = _pairs()
    frame = pl.DataFrame(pairs, schema=["key", "digits"], orient="row")
    got = frame.select(phonejoin.matches(kind, pl.col("key"), pl.col("digits")))["key"].fill_null(False).to_list()
    want = [bool(p and p.fullmatch(d)) for k, d in pairs for p in [_python(k, kind)]]
    assert got == want
    assert sum(want) >= 10  # the pairs reach matches, not only misses


@pytest.mark.parametrize("kind", ["international_prefix", "national_prefix"])
def test_a_prefix_is_stripped_as_the_regions_own_pattern_matches(kind: str) -> None:
    pairs = _pairs() + [(key, "00" + digits) for key, digits in _pairs(1)] + [(key, "") for key in metadata().regions]
    frame = pl.DataFrame(pairs, schema=["key", "digits"], orient="row")
    got = frame.select(phonejoin.strip_prefix(kind, pl.col("key"), pl.col("digits")))["key"].to_list()
    want = []
    for key, digits in pairs:
        found = (p := _python(key, kind)) and p.match(digits)
        want.append(digits[found.end() :] if found else None)
    assert got == want
    assert sum(w is not None for w in want) > 50


def _every_length() -> list[tuple[str, str]]:
    """Each example number under its own region, cut or padded to every length from 4 to 17,
    and every example cut by one to three digits under US: patterns allow lengths that the
    metadata's possible lengths do not (US's general pattern takes 7-digit numbers that are
    only possible locally)."""
    own = {r: r for r in phonenumbers.SUPPORTED_REGIONS}
    examples = example_numbers()
    cut = [("US", nsn[:-n]) for _, _, nsn, _ in examples for n in (1, 2, 3)]
    return [(own.get(region, f"+{code}"), (nsn * 3)[:size]) for region, code, nsn, _ in examples
            for size in range(4, 18)] + cut  # fmt: skip


def test_the_number_type_is_phonenumbers_under_any_region() -> None:
    """type_steps against phonenumbers' own _number_type_helper with that region's metadata, and
    each kind's check against phonenumbers' _is_number_matching_desc (pattern and length)."""
    pairs = _pairs() + _every_length()
    frame = pl.DataFrame(pairs, schema=["_meta", "_nat"], orient="row")
    for step in phonejoin.type_steps(pl.col("_meta"), pl.col("_nat"), "_type"):
        frame = frame.with_columns(**step)
    names = {**TYPE_NAMES, phonenumbers.PhoneNumberType.UNKNOWN: None}
    want: list[str | None] = []
    checks: dict[str, list[bool]] = {"general": [], "fixed_line": [], "mobile": [], "toll_free": []}
    for key, digits in pairs:
        region = metadata().regions[key]
        if key.startswith("+"):
            meta = PhoneMetadata.metadata_for_nongeo_region(region.country_code)
        else:
            meta = PhoneMetadata.metadata_for_region(key)
        want.append(names[util._number_type_helper(digits, meta)])
        for kind in ("general", "fixed_line", "mobile", "toll_free"):
            desc = getattr(meta, "general_desc" if kind == "general" else kind)
            if kind == "mobile" and meta.same_mobile_and_fixed_line_pattern:
                desc = None  # asked as fixed_line
            checks[kind].append(bool(desc) and util._is_number_matching_desc(digits, desc))
    assert frame["_type"].to_list() == want
    for kind, matching in checks.items():
        assert frame[f"_t_{kind}"].to_list() == matching, kind
    assert {"mobile", "fixed_line", "toll_free", "premium_rate", None} <= set(want)


def test_a_transform_rule_the_join_cannot_express_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every rule in phonenumbers' metadata is <digits>${last group}; another shape (after an
    upgrade) stops with the region named rather than transforming wrongly."""
    meta = metadata()
    regions = dict(meta.regions)
    regions["AR"] = dataclasses.replace(regions["AR"], transform="${1}9")
    monkeypatch.setattr(phonejoin, "metadata", lambda: dataclasses.replace(meta, regions=regions))
    phonejoin.joined.cache_clear()
    phonejoin._transforms.cache_clear()
    try:
        with pytest.raises(ValueError, match="AR: unsupported national prefix transform rule"):
            phonejoin._transforms()
    finally:
        monkeypatch.undo()
        phonejoin.joined.cache_clear()
        phonejoin._transforms.cache_clear()
    assert phonejoin._transforms()[0]["AR"] == "9"
