"""Seeded phone-number corpora for tests and benchmarks: libphonenumber's example number of every
type in every region (geographic and non-geographic), written the ways people write them, with
their last digits varied, plus the mistakes real uploads contain."""

from __future__ import annotations

import random
from collections.abc import Iterator
from functools import cache

import phonenumbers
from phonenumbers import PhoneNumberFormat as Fmt
from phonenumbers import PhoneNumberType

Row = tuple[str, str]  # (phone as written, country column)


Example = tuple[str, int, str, bool]  # region, calling code, national significant number, mobile?


@cache
def example_numbers() -> tuple[Example, ...]:
    """libphonenumber's example number of every type in every region (and non-geographic code)."""
    out: list[Example] = []
    kinds = [v for k, v in vars(PhoneNumberType).items() if k.isupper() and k != "UNKNOWN"]
    mobile = (PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE)
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in kinds:
            number = phonenumbers.example_number_for_type(region, kind)
            if number is not None:
                nsn = phonenumbers.national_significant_number(number)
                out.append((region, number.country_code, nsn, phonenumbers.number_type(number) in mobile))
    for code in sorted(phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS):
        number = phonenumbers.example_number_for_non_geo_entity(code)
        if number is not None:
            out.append(("001", code, phonenumbers.national_significant_number(number), False))
    return tuple(dict.fromkeys(out))


def _vary(nsn: str, rng: random.Random) -> str:
    keep = max(3, len(nsn) - rng.choice((4, 5, 6, 6)))
    return nsn[:keep] + "".join(rng.choice("0123456789") for _ in range(len(nsn) - keep))


def _group(digits: str, rng: random.Random, sep: str) -> str:
    out, i = [], 0
    while i < len(digits):
        step = rng.choice((2, 3, 4))
        out.append(digits[i : i + step])
        i += step
    return sep.join(out)


def written(region: str, code: int, nsn: str, rng: random.Random) -> Row:
    """One valid-looking way to write the number, with the country column a person would give."""
    number = phonenumbers.PhoneNumber(country_code=code, national_number=int(nsn))
    if nsn.startswith("0"):
        number.italian_leading_zero = True
        number.number_of_leading_zeros = len(nsn) - len(nsn.lstrip("0")) or None
    country = region if region != "001" else ""
    style = rng.choices(["e164", "intl", "dashed", "dotted", "parens", "00", "national", "compact"],
                        [30, 20, 5, 3, 4, 10, 23, 5])[0]  # fmt: skip
    with_country = country if rng.random() < 0.6 else ""
    if style == "e164":
        return f"+{code}{nsn}", with_country
    if style == "intl":
        return phonenumbers.format_number(number, Fmt.INTERNATIONAL), with_country
    if style in ("dashed", "dotted"):
        return f"+{code} " + _group(nsn, rng, "-" if style == "dashed" else "."), with_country
    if style == "parens":
        return f"+{code} ({nsn[:2]}) {_group(nsn[2:], rng, ' ')}", with_country
    if style == "00":
        return "00" + phonenumbers.format_number(number, Fmt.INTERNATIONAL)[1:], with_country
    if style == "national" and country:
        return phonenumbers.format_number(number, Fmt.NATIONAL), country
    return phonenumbers.format_number(number, Fmt.NATIONAL).replace(" ", ""), country


def mistake(region: str, code: int, nsn: str, rng: random.Random) -> Row:
    """A malformed or invalid way to write it."""
    regions = sorted(phonenumbers.SUPPORTED_REGIONS)
    country = region if region != "001" else ""
    e164 = f"+{code}{nsn}"
    choices = [
        (e164[: -rng.choice((1, 2, 3))], country),  # too short
        (e164 + "".join(rng.choice("0123456789") for _ in range(rng.choice((1, 2, 4)))), ""),  # too long
        (nsn, rng.choice(regions)),  # national digits, wrong country
        (nsn, ""),  # national, no country
        (nsn, "UK" if region == "GB" else "XX"),  # not an ISO code
        (e164[:-2] + rng.choice("ABCXYZ") + e164[-1], ""),  # a letter
        (e164 + " ext. " + str(rng.randint(1, 999)), ""),  # an extension
        ("+1-800-FLOWERS", "US"),  # a vanity number
        ("", country),
        ("n/a", country),
        (f"{float(e164[1:]):.5E}", country),  # what a spreadsheet makes of it
        ("+999 " + nsn, ""),  # no such calling code
        ("+0" + nsn, country),  # + then a national number
        ("00" + nsn, rng.choice(regions)),  # 00 without a calling code
        ("=1+1", ""),  # formula-looking junk
        ("'" + e164, ""),  # a spreadsheet's text marker
        (" " + e164 + " \t", ""),  # stray whitespace
        ("tel:" + e164, ""),  # RFC 3966-ish
        (e164[:4] + " / " + e164[4:], ""),  # a slash
        ("0" + nsn, country),  # an extra leading zero
        ("+" + str(code) + "0" + nsn, ""),  # a national prefix kept after the code
        (e164.replace("+", "++"), ""),
        ("12", country),
        ("+" + str(code), ""),
    ]
    return rng.choice(choices)


def sample(
    count: int, seed: int, *, mistakes: float = 0.05, exclude: frozenset[str] = frozenset()
) -> Iterator[tuple[str, str, str]]:
    """`count` (phone, country, region) rows cycling through every example number (so every
    region but `exclude` appears), each varied; a share `mistakes` of them malformed."""
    rng = random.Random(seed)
    examples = [e for e in example_numbers() if e[0] not in exclude]
    mobiles = [e for e in examples if e[3]]
    others = [e for e in examples if not e[3]]
    rng.shuffle(mobiles)
    rng.shuffle(others)
    for index in range(count):
        # Mostly mobiles, as in a messaging audience; every example comes round (every region).
        pool = others if index % 7 == 6 or not mobiles else mobiles
        region, code, nsn, _ = pool[(index // 7 if pool is others else index) % len(pool)]
        nsn = _vary(nsn, rng)
        phone, country = (mistake if rng.random() < mistakes else written)(region, code, nsn, rng)
        yield phone, country, region
