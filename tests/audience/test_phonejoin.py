"""The joined regexes (one per kind of pattern, every region's behind its key) answer exactly what
each region's own pattern answers: under the row's own key and under any other region's; and the
national prefix's transform rule rewrites as phonenumbers does."""

from __future__ import annotations

import dataclasses
import random
import re

import phonenumbers
import polars as pl
import pytest
from phonenumbers import PhoneNumberFormat

from pipeline.audience import phonejoin
from pipeline.audience.phonecorpus import example_numbers
from pipeline.audience.phonemeta import metadata

_ANCHOR = re.compile(r"\(\?-u\)\^\(\?:(.*)\)\$?", re.DOTALL)


def _pairs(draws: int = 3) -> list[tuple[str, str]]:
    """(key, digits): every example number's national number, asked under its own region and
    `draws` others; the same digits with a 0, a 1 or the calling code in front (national and
    trunk prefixes), and one digit shorter or longer."""
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
    pattern = phonejoin._pattern(metadata().regions[key], kind)
    return None if pattern is None else re.compile(_ANCHOR.fullmatch(pattern).group(1))  # type: ignore[union-attr]


def test_the_general_pattern_matches_as_the_regions_own() -> None:
    kind = "general"
    pairs = _pairs()
    frame = pl.DataFrame(pairs, schema=["key", "digits"], orient="row")
    got = frame.select(phonejoin.matches(kind, pl.col("key"), pl.col("digits")))["key"].fill_null(False).to_list()
    want = [bool(p and p.fullmatch(d)) for k, d in pairs for p in [_python(k, kind)]]
    assert got == want
    assert sum(want) > 1000  # the pairs reach matches, not only misses


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


def test_a_transform_rule_rewrites_as_phonenumbers_does() -> None:
    """_maybe_strip_national_prefix_carrier_code's transform, in the regions that have one: where
    the national prefix pattern matches and its last group took part, re.sub of the rule."""
    regions = {k: m for k, m in metadata().regions.items() if m.transform}
    pairs = [(key, digits) for key, digits in _pairs(0) if key in regions]
    pairs += [(key, digits[-size:]) for key, digits in pairs for size in (5, 6, 7, 8)]  # local numbers
    for region, code, nsn, _ in example_numbers():  # as written nationally: AR's 0 11 15 ...
        if region in regions:
            national = phonenumbers.format_number(phonenumbers.parse(f"+{code}{nsn}"), PhoneNumberFormat.NATIONAL)
            pairs.append((region, re.sub(r"\D", "", national)))
    pairs += [(key, lead + digits) for key, digits in pairs for lead in ("15", "90", "0", "00")]
    frame = pl.DataFrame(pairs, schema=["key", "digits"], orient="row")
    key, digits = pl.col("key"), pl.col("digits")
    rest = phonejoin.strip_prefix("national_prefix", key, digits)
    got = frame.select(phonejoin.transformed(key, digits, rest))["key"].to_list()
    want = []
    for key_, text in pairs:
        meta = phonenumbers.PhoneMetadata.metadata_for_region(key_)
        prefix = re.compile(meta.national_prefix_for_parsing)
        found = prefix.match(text)
        took_part = found is not None and found.groups()[-1] is not None
        want.append(prefix.sub(meta.national_prefix_transform_rule, text, count=1) if took_part else None)
    assert got == want
    assert sum(w is not None for w in want) > 50  # the transform really happens
    assert {k for (k, _), w in zip(pairs, want, strict=True) if w is not None} >= {"AR", "BR", "AG", "GG"}


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
