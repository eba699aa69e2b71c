"""Classifying a column of phone numbers exactly as phonenumbers does (parse + is_valid_number +
number_type + region_code_for_number), vectorised: pipeline/audience/phoneparse.py models parse() for
the plain inputs nearly every upload consists of, also when phonenumbers reads them out of a
"tel:", an " ext. 123" or one stray letter; anything else — vanity letters, other extension
styles, other punctuation or digit scripts, fewer than three digits — goes to phonenumbers
itself, once per unique (phone, country). The details of invalid numbers are worded the same
either way."""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import polars as pl

from pipeline.audience.phonemeta import MAX_INPUT_LENGTH, MAX_LENGTH, TOO_LONG, TOO_SHORT, Metadata, metadata
from pipeline.audience.phoneparse import FALLBACK, ICC, LONG, NAN, SHORT, length, parse_fast
from pipeline.runtime import SharedSettings

# What the fast path models exactly: leading junk phonenumbers skips, leading +s (it strips them
# all: "++44…" is "+44…"), then ASCII digits, spaces, dashes, dots, slashes and parentheses (all
# in its VALID_PUNCTUATION, removed alike; a slash only starts a second number before an x).
FAST_INPUT = r"^[ '(.\-]*\+*[0-9 ().\-/]*$"

# A number wrapped in letters phonenumbers reads past: an RFC 3966 "tel:" in front (skipped as
# leading junk) and an " ext. 123" extension behind (split off; the extension is not part of the
# number). Inside is a plain input, parsed the same way; were it invalid, the letters are the reason
# given (as numbers._judge words it), and the 00 rule, which only reads plain inputs, does not apply.
WRAPPERS = r"^tel:|[ ]ext\. [0-9]{1,20}$"
# One letter after the third digit is dropped (fewer than three letters are not a vanity number);
# not x (an extension follows) nor e (the detail given is scientific notation).
ONE_LETTER = r"^(\+?[0-9]{3,})[A-DF-WYZa-df-wyz]([0-9]*)$"
LETTERS = "contains letters"
# What a spreadsheet makes of a long number in a numeric cell (4.47911E+11): never a number to
# phonenumbers, since its patterns allow no + after the first digit.
SCIENTIFIC = r"^[0-9]+([.,][0-9]+)?[eE]\+[0-9]+$"
SCIENTIFIC_DETAIL = "in scientific notation (a spreadsheet turned it into a number)"

SWITCH_INTERVAL_S = 0.0001

Classified = tuple[str | None, str | None, str | None, str | None]  # e164, region, type, why invalid
Fallback = Callable[[str, str], Classified]

NEEDS_COUNTRY = "needs a country column: not in international format (+…) and no country"
PARSE_ERRORS = {ICC: "unknown country calling code", NAN: "not a phone number", SHORT: "too short", LONG: "too long"}


def unknown_country(country: str) -> str:
    hint = " (did you mean GB?)" if country == "UK" else ""
    return f"unknown country {country!r}{hint}: use ISO 3166 alpha-2 codes"


def invalid_detail(verdict_any: int, verdict_mobile: int, region: str) -> str:
    """Why a parsed number is not valid, from its length verdicts (as any number, as a mobile)."""
    verdict = verdict_any if verdict_any in (TOO_SHORT, TOO_LONG) else verdict_mobile
    if verdict == TOO_SHORT:
        return f"too short for {region}"
    if verdict == TOO_LONG:
        return f"too long for {region}"
    return f"not a valid number for {region}"


def _verdicts(meta: Metadata) -> pl.DataFrame:
    """(calling code, length) -> the main region and its length verdicts."""
    rows = [
        (str(code), n, meta.regions[key].length_any[n], meta.regions[key].length_mobile[n], meta.regions[key].region)
        for code, key in meta.main_key.items()
        for n in range(MAX_LENGTH + 1)
    ]
    return pl.DataFrame(
        rows, schema={"_cc": pl.String, "_len": pl.UInt32, "_v_any": pl.Int8, "_v_mobile": pl.Int8, "_main": pl.String},
        orient="row",
    )  # fmt: skip


def _details(rows: pl.DataFrame, meta: Metadata) -> pl.Series:
    """Why each row (a parse_fast result with _plus, _R, _country) is invalid; null if valid."""
    own_code = {r: str(meta.regions[r].country_code) for r in meta.supported_regions}
    rows = rows.with_columns(_len=length(pl.col("_nat")).cast(pl.UInt32)).join(
        _verdicts(meta), on=["_cc", "_len"], how="left", maintain_order="left"
    )
    region = (
        pl.when(pl.col("_R").replace_strict(own_code, default=None, return_dtype=pl.String) == pl.col("_cc"))
        .then(pl.col("_R"))
        .otherwise(pl.col("_main"))
    )
    verdict = pl.when(pl.col("_v_any").is_in([TOO_SHORT, TOO_LONG])).then("_v_any").otherwise("_v_mobile")
    invalid = (
        pl.when(verdict == TOO_SHORT)
        .then(pl.format("too short for {}", region))
        .when(verdict == TOO_LONG)
        .then(pl.format("too long for {}", region))
        .otherwise(pl.format("not a valid number for {}", region))
    )
    country = pl.col("_country")
    unknown = {c: unknown_country(c) for c in rows["_country"].unique().to_list() if c}
    detail = (
        pl.when(pl.col("_err").is_null() & pl.col("_type").is_not_null())
        .then(pl.lit(None, dtype=pl.String))
        .when((pl.col("_err") == ICC) & ~pl.col("_plus") & pl.col("_R").is_null())
        .then(
            pl.when(country == "")
            .then(pl.lit(NEEDS_COUNTRY))
            .otherwise(country.replace_strict(unknown, default=None, return_dtype=pl.String))
        )
        .when(pl.col("_err").is_not_null())
        .then(pl.col("_err").replace_strict(PARSE_ERRORS, default=PARSE_ERRORS[NAN]))
        .otherwise(invalid)
    )
    return rows.select(detail.alias("_invalid"))["_invalid"]


def _attempt(rows: pl.DataFrame) -> pl.DataFrame:
    """parse_fast and the details, aligned with `rows` (_i ascending; _D of 3 digits or more;
    _plus, _R, _country)."""
    parsed = parse_fast(rows.select("_i", "_D", "_plus", "_R")).hstack(rows.select("_plus", "_R", "_country"))
    valid = parsed["_err"].is_null() & parsed["_type"].is_not_null()
    detail = pl.repeat(None, parsed.height, dtype=pl.String, eager=True).alias("_invalid")
    invalid = parsed.filter(~valid)
    if invalid.height:
        detail = detail.scatter((~valid).arg_true(), _details(invalid, metadata()))
    return parsed.with_columns(valid.alias("_valid"), detail)


_RESULTS = ["_cc", "_nat", "_region", "_type", "_err", "_valid", "_invalid"]
_NAMES = ["phone_e164", "region", "number_type", "_invalid"]


def _ask(fallback: Fallback, rows: pl.DataFrame) -> pl.DataFrame:
    """rows (_i, _phone, _country) classified by `fallback`, once per unique pair."""
    pairs = rows.select("_phone", "_country").unique()
    answers = [fallback(p, c) for p, c in pairs.iter_rows()]
    lookup = pairs.hstack([pl.Series(n, [a[k] for a in answers], dtype=pl.String) for k, n in enumerate(_NAMES)])
    return rows.join(lookup, on=["_phone", "_country"], how="left").select("_i", *_NAMES)


def _unwrapped(text: pl.Series) -> tuple[pl.Series, pl.Series, pl.Series]:
    """(the input, unwrapped where WRAPPERS or ONE_LETTER held a plain input; whether it is plain
    now; whether it was unwrapped). Only the few rows not plain as written are looked at."""
    plain = text.str.contains(FAST_INPUT).fill_null(False)
    lettered = pl.repeat(False, len(text), dtype=pl.Boolean, eager=True)
    where = (~plain).arg_true()
    if len(where):
        inner = text.gather(where).str.replace_all(WRAPPERS, "").str.replace(ONE_LETTER, "${1}${2}")
        found = (inner != text.gather(where)) & inner.str.contains(FAST_INPUT)
        where, inner = where.filter(found), inner.filter(found)
        text, plain, lettered = text.scatter(where, inner), plain.scatter(where, True), lettered.scatter(where, True)
    return text, plain, lettered


def _fast_path(fast: pl.DataFrame, size: int) -> pl.DataFrame:
    """parse_fast over the fast rows, with the 00 rule's second attempt where the first fails."""
    retry = fast.filter(~pl.col("_plus") & ~pl.col("_lettered") & pl.col("_D").str.starts_with("00")).select(
        pl.col("_i") + size, pl.col("_D").str.slice(2), _plus=pl.lit(True), _R=pl.lit(None, pl.String),
        _country=pl.lit(""), _lettered=pl.lit(False),
    )  # fmt: skip
    viable = retry["_D"].str.len_bytes() >= 3  # "+d" and "+dd" are not viable phone numbers
    attempts = _attempt(pl.concat([fast, retry.filter(viable)]))
    first = attempts.head(fast.height)
    again = pl.concat(
        [attempts.tail(attempts.height - fast.height),
         retry.filter(~viable).select("_i", "_plus", "_R", "_country", _err=pl.lit(NAN), _valid=pl.lit(False),
                                      _invalid=pl.lit(PARSE_ERRORS[NAN]))],
        how="diagonal_relaxed",
    ).sort("_i")  # fmt: skip
    where = fast["_i"].search_sorted(again["_i"] - size)
    use = ~first["_valid"].gather(where)
    if use.any():
        where, again = where.filter(use), again.filter(use)
        first = first.with_columns(first[c].scatter(where, again[c].cast(first.schema[c])) for c in _RESULTS)
    return first


def _quiet() -> tuple[float, bool]:
    """While classifications run: a short switch interval and no cyclic collector.

    The fast path hands the GIL back and forth with many short calls (one plan per region); with
    the default 5 ms switch interval each of them can wait that long behind the phonenumbers
    thread. The cyclic collector, which phonenumbers' garbage sets off again and again, runs once
    at the end instead. Preparation classifies batches in several threads at once: the settings are
    shared (pipeline/runtime.py), the last one out puts them back."""
    saved = (sys.getswitchinterval(), gc.isenabled())
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    gc.disable()
    return saved


def _loud(saved: tuple[float, bool]) -> None:
    switch, collecting = saved
    sys.setswitchinterval(switch)
    if collecting:
        gc.enable()


_QUIET = SharedSettings(_quiet, _loud)


def classify_numbers(phone: pl.Series, country: pl.Series, fallback: Fallback) -> tuple[pl.DataFrame, int]:
    """(phone_e164, region, number_type, _invalid) for every row, in order, and how many rows
    went to `fallback` (numbers.classify_number: phonenumbers, once per unique pair).

    `country` is each row's upper-case ISO 3166 code, "" when unknown. As in classify_number, a
    number written 00<digits> without + that is not valid as read is read as +<digits>."""
    meta = metadata()
    size = len(phone)
    frame = pl.DataFrame({"_phone": phone.fill_null(""), "_country": country.fill_null("")}).with_row_index("_i")
    text, plain, lettered = _unwrapped(frame["_phone"].str.strip_chars())
    frame = frame.with_columns(text.alias("_t"), lettered.alias("_lettered")).with_columns(
        # a fast-path input holds no other characters than these and digits
        _D=pl.col("_t").str.replace_many([" ", "'", "(", ")", ".", "-", "/", "+"], [""] * 8),
        _plus=pl.col("_t").str.contains("+", literal=True),
        _R=pl.when(pl.col("_country").is_in(sorted(meta.supported_regions))).then(pl.col("_country")),
        _fast=pl.lit(plain) & (pl.col("_phone").str.len_chars() <= MAX_INPUT_LENGTH),
    )
    frame = frame.with_columns(_fast=pl.col("_fast") & (pl.col("_D").str.len_bytes() >= 3))
    fast = frame.filter(pl.col("_fast")).select("_i", "_D", "_plus", "_R", "_country", "_lettered")
    slow = frame.filter(~pl.col("_fast")).select("_i", "_phone", "_country", "_t")
    scientific = slow["_t"].str.contains(SCIENTIFIC)
    known = slow.filter(scientific).select("_i", *(pl.lit(None, pl.String).alias(n) for n in _NAMES[:3]),
                                           _invalid=pl.lit(SCIENTIFIC_DETAIL))  # fmt: skip
    slow = slow.filter(~scientific).drop("_t")
    with _QUIET, ThreadPoolExecutor(1) as pool:
        # phonenumbers works through the unusual inputs while Polars (without the GIL) does the rest.
        answered = pool.submit(_ask, fallback, slow)
        first = _fast_path(fast, size).hstack([fast["_lettered"]])
        handed_back = (first["_err"] == FALLBACK).fill_null(False)
        late = first.filter(handed_back).select("_i").join(frame.select("_i", "_phone", "_country"), on="_i")
        asked = pl.concat([answered.result(), _ask(fallback, late)])
    # phonenumbers keeps each exception it retries past in a reference cycle with its frame, and so
    # every frame above it until the cyclic collector runs: collect now rather than hold memory. With
    # the collector off, what was made since is still in the youngest generation: collecting that
    # one frees the cycles without walking every object the process holds (a full pass: ~50 ms).
    gc.collect(0)
    valid = pl.col("_valid")
    done = first.filter(~handed_back).select(
        "_i",
        pl.when(valid).then(pl.concat_str(pl.lit("+"), "_cc", "_nat")).alias("phone_e164"),
        pl.when(valid).then(pl.col("_region")).alias("region"),
        pl.when(valid).then(pl.col("_type")).alias("number_type"),
        pl.when(valid).then(None).when("_lettered").then(pl.lit(LETTERS)).otherwise("_invalid").alias("_invalid"),
    )
    # Every row is in exactly one of the parts: putting them back in order is a sort on _i
    # (scattering string columns into a frame of nulls costs several times more).
    parts = [part.select("_i", *(pl.col(n).cast(pl.String) for n in _NAMES)) for part in (done, asked, known)]
    result = pl.concat(parts).sort("_i")
    if not (result["_i"].cast(pl.Int64) == pl.int_range(0, size, eager=True)).all() or result.height != size:
        raise RuntimeError(f"classify_numbers: {result.height} results for {size} rows")  # never silently
    return result.drop("_i"), asked.height
