"""Validating the audience's phone numbers and consent: E.164, valid, mobile, allowed country,
opted in, not suppressed, not frequency-capped, not a duplicate. phonenumbers is the authority on
numbers: numbers_fast reproduces its answers vectorised over its own metadata, and hands the
inputs it does not model to classify_number (phonenumbers itself, once per unique pair)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import phonenumbers
import polars as pl
from phonenumbers import NumberParseException, PhoneNumberFormat, PhoneNumberType, phonenumberutil

from pipeline.audience.address_sets import PLAIN_E164, matcher
from pipeline.audience.consent import (
    DEFAULT_OPT_IN_MAX_AGE,
    OPT_IN_VALUES,
    consent_columns,
    consent_rules,
    parse_opt_in,
)
from pipeline.audience.frequency import DEFAULT_FREQUENCY_WINDOW
from pipeline.audience.numbers_fast import (
    FAST_INPUT,
    ICC,
    LETTERS,
    LONG,
    NAN,
    NEEDS_COUNTRY,
    PARSE_ERRORS,
    SCIENTIFIC_DETAIL,
    SHORT,
    Classified,
    classify_numbers,
    invalid_detail,
    unknown_country,
)
from pipeline.audience.policy import BlockedPolicy, blocked_policy
from pipeline.records import REJECTS_SCHEMA, empty_rejects

# Keep every compiled metadata regex: over all regions they overflow the re module's cache of
# 512 and phonenumbers recompiles on every call (10× slower). Older releases lack the switch.
getattr(phonenumbers, "enable_pattern_cache", lambda: None)()

TYPE_NAMES: dict[int, str] = {v: k.lower() for k, v in vars(PhoneNumberType).items() if k.isupper()}
MOBILE_TYPES = ("mobile", "fixed_line_or_mobile")
__all__ = ["OPT_IN_VALUES", "Carry", "classify_number", "parse_opt_in", "validate_numbers"]

_PARSE_ERRORS = {
    NumberParseException.INVALID_COUNTRY_CODE: PARSE_ERRORS[ICC],
    NumberParseException.NOT_A_NUMBER: PARSE_ERRORS[NAN],
    NumberParseException.TOO_SHORT_AFTER_IDD: PARSE_ERRORS[SHORT],
    NumberParseException.TOO_SHORT_NSN: PARSE_ERRORS[SHORT],
    NumberParseException.TOO_LONG: PARSE_ERRORS[LONG],
}
# What a spreadsheet makes of a long number typed into a numeric cell: 4.47911E+11.
_SCIENTIFIC = re.compile(r"\d+([.,]\d+)?[eE]\+?\d+")
_FAST_INPUT = re.compile(FAST_INPUT)

Parsed = tuple[phonenumbers.PhoneNumber | None, int | None]  # the number, or the parse error type


def _parse(text: str, region: str | None) -> Parsed:
    try:
        return phonenumbers.parse(text, region), None
    except NumberParseException as exc:
        return None, exc.error_type


def _judge(parsed: Parsed, raw: str, country: str, region: str | None) -> Classified:
    number, error = parsed
    if number is not None and phonenumbers.is_valid_number(number):
        return (
            phonenumbers.format_number(number, PhoneNumberFormat.E164),
            phonenumbers.region_code_for_number(number),
            TYPE_NAMES.get(phonenumbers.number_type(number), "unknown"),
            None,
        )
    text = raw.strip().lstrip("'").strip()
    if not text:
        why = "phone is empty"
    elif _SCIENTIFIC.fullmatch(text):
        why = SCIENTIFIC_DETAIL
    elif any(ch.isalpha() for ch in text):
        why = LETTERS
    elif number is None:
        plus = "+" in raw or "\uff0b" in raw
        if error == NumberParseException.INVALID_COUNTRY_CODE and not plus and region is None:
            why = unknown_country(country) if country else NEEDS_COUNTRY
        else:
            why = _PARSE_ERRORS.get(error, PARSE_ERRORS[NAN])
    else:
        why = _invalid_detail(number, region)
    return None, None, None, why


def _invalid_detail(number: phonenumbers.PhoneNumber, region: str | None) -> str:
    cc = number.country_code
    if region is None or phonenumbers.country_code_for_region(region) != cc:
        region = phonenumbers.region_code_for_country_code(cc)
    nsn = phonenumbers.national_significant_number(number)
    main = phonenumbers.PhoneMetadata.metadata_for_region_or_calling_code(
        cc, phonenumbers.region_code_for_country_code(cc)
    )
    if main is None:
        return f"unknown country calling code +{cc}"
    return invalid_detail(
        phonenumberutil._test_number_length(nsn, main, PhoneNumberType.UNKNOWN),
        phonenumberutil._test_number_length(nsn, main, PhoneNumberType.MOBILE),
        region,
    )


def _after_00(raw: str) -> str | None:
    """The digits after 00 when `raw` is written as 00<digits> (no +), else None."""
    text = raw.strip()
    if "+" in text or not _FAST_INPUT.fullmatch(text):
        return None
    digits = re.sub(r"[^0-9]", "", text)
    return digits[2:] if digits.startswith("00") else None


def classify_number(phone: str, country: str) -> Classified:
    """(E.164, region, number type, None) for a valid number, else (None, None, None, why): what
    phonenumbers.parse(phone, country) + is_valid_number + number_type + region_code_for_number
    say, with one rule of ours: a number written 00<digits> that is not valid as read (say the
    country dials 011) is read as +<digits>.

    `country` is the row's upper-case ISO 3166 alpha-2 code ("" when unknown); it only matters
    for numbers written without an international prefix. This is the per-row reference the
    vectorised path (numbers_fast) agrees with, and its fallback for unusual inputs.
    """
    raw = phone or ""
    region = country if country in phonenumbers.SUPPORTED_REGIONS else None
    found = _judge(_parse(raw, region), raw, country, region)
    if found[3] is None:
        return found
    digits = _after_00(raw)
    if digits is None:
        return found
    return _judge(_parse("+" + digits, None), "+" + digits, "", None)


# How a reject names why its recipient is suppressed (the suppressions table's reasons).
SUPPRESSION_TEXT = {"stop_reply": "replied STOP", "opt_out_button": "tapped an opt-out button",
                    "unsubscribe": "unsubscribed", "marketing_opt_out": "stopped marketing messages at the provider"}


def suppression_detail(channel: str, reasons: Mapping[str, str] | None, column: str = "phone_e164") -> Any:
    """A suppressed row's reject detail: the suppression list and, when `reasons` (address -> reason) knows the
    address, how the recipient opted out. Phone addresses are matched in E.164, ids as written."""
    generic = f"on the {channel} suppression list (opted out earlier)"
    if not reasons:
        return pl.lit(generic)
    texts: dict[str, str] = {}
    for address, reason in reasons.items():
        key = address if column != "phone_e164" else "+" + re.sub(r"\D", "", address)
        texts[key] = f"on the {channel} suppression list (opted out earlier: {SUPPRESSION_TEXT.get(reason, reason)})"
    return pl.col(column).replace_strict(texts, default=generic, return_dtype=pl.String)


# A plain E.164 number (address_sets.PLAIN_E164) is kept in the dedupe carry as one Int64 of its digits
# ("+447400123456" is 447400123456); any other key is kept as text.

# A new run of keys is merged into the run before it while that one is at most this many times larger:
# runs stay few (about log2 of numbers / batch) and a number is copied a few times, not once per batch.
_RUN_FACTOR = 2


@dataclass
class SeenKeys:
    """Keys (all Int64 or all String), each with the row that had it first, as a few runs sorted by
    key (`_key`, unique across runs; `_first`): a batch sorted by key is looked up by a merge join
    against each run, so what earlier batches held is never hashed again."""

    dtype: pl.DataType
    runs: list[pl.DataFrame] = field(default_factory=list)

    @property
    def height(self) -> int:
        return sum(run.height for run in self.runs)

    def first_rows(self, ordered: pl.DataFrame) -> pl.Series:
        """For `ordered` (`_key` sorted ascending), the row that had each key in an earlier batch, else null."""
        keys = ordered.select(pl.col("_key").set_sorted())
        hits = [keys.join(run, on="_key", how="left", maintain_order="left", nulls_equal=True) for run in self.runs]
        hits = [hit["_first"] for hit in hits]
        if not hits:
            return pl.repeat(None, ordered.height, dtype=pl.Int64, eager=True).alias("_first")
        return hits[0] if len(hits) == 1 else pl.select(pl.coalesce(hits)).to_series().alias("_first")

    def add(self, winners: pl.DataFrame) -> None:
        """Adds keys not held yet (`_key` sorted ascending and unique, `_first`)."""
        if winners.height == 0:
            return
        self.runs.append(winners.select(pl.col("_key").cast(self.dtype).set_sorted(), pl.col("_first").cast(pl.Int64)))
        while len(self.runs) > 1 and self.runs[-2].height <= _RUN_FACTOR * self.runs[-1].height:
            newer, older = self.runs.pop(), self.runs.pop()
            self.runs.append(older.merge_sorted(newer, key="_key").with_columns(pl.col("_key").set_sorted()))


@dataclass
class Carry:
    """What one batch of an audience hands the next: the numbers accepted so far with the row
    that had each first (so a duplicate in a later batch names it), and how many rows were
    classified by phonenumbers itself rather than the vectorised path. Numbers are held compactly:
    plain E.164 numbers as Int64 (16 bytes a number with its row), any other key as text."""

    numbers: SeenKeys = field(default_factory=lambda: SeenKeys(pl.Int64()))
    texts: SeenKeys = field(default_factory=lambda: SeenKeys(pl.String()))
    fallback_rows: int = 0

    @property
    def seen(self) -> int:
        """How many numbers the carry holds."""
        return self.numbers.height + self.texts.height


def validate_numbers(
    frame: pl.DataFrame,
    *,
    channel: str,
    category: str,
    policy: BlockedPolicy | None = None,
    suppressed: Iterable[str] = frozenset(),
    default_country: str | None = None,
    recently_messaged: Iterable[str] = frozenset(),
    frequency_window: timedelta = DEFAULT_FREQUENCY_WINDOW,
    opt_in_max_age: timedelta | None = DEFAULT_OPT_IN_MAX_AGE,
    now: datetime | None = None,
    carry: Carry | None = None,
    dedupe: bool = True,
    frequency_detail: str | None = None,
    capped_categories: frozenset[str] = frozenset({"marketing"}),
    suppression_reasons: Mapping[str, str] | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(accepted, rejects). Accepted rows gain phone_e164, region and number_type; each rejected
    row gets the first reason of: bad_row (opt_in, opt_in_at), invalid_number, not_mobile,
    blocked_country, no_opt_in and stale_opt_in (marketing only), suppressed, frequency_capped
    (marketing only: `recently_messaged` got a marketing message on this channel within
    `frequency_window`), duplicate (the first accepted row wins, across batches via `carry`;
    `dedupe=False` leaves that to drop_duplicates, after later stages have had their say). A team's cap
    (pipeline/audience/frequency.py) names the categories it applies to and its own `frequency_detail`."""
    for needed in ("row_number", "phone", "opt_in"):
        if needed not in frame.columns:
            raise ValueError(f"validate_numbers: the audience has no {needed!r} column")
    if policy is None:
        policy = blocked_policy(channel)
    carry = carry if carry is not None else Carry()
    columns = frame.columns
    default = (default_country or "").strip().upper()

    country = (
        pl.col("country").str.strip_chars().str.to_uppercase().fill_null("")
        if "country" in columns
        else pl.lit("", dtype=pl.String)
    )
    keyed = frame.with_columns(pl.when(country == "").then(pl.lit(default)).otherwise(country).alias("_country"))
    # Vectorised over phonenumbers' metadata; unusual inputs go to phonenumbers once per unique pair.
    found, fallback_rows = classify_numbers(keyed["phone"], keyed["_country"], classify_number)
    carry.fallback_rows += fallback_rows
    checked = keyed.drop("_country").hstack(found)
    checked = checked.with_columns(_blocked=policy.detail_expr(), **consent_columns(columns, category=category))

    bad_values, no_consent = consent_rules(columns, category=category, max_age=opt_in_max_age, now=now)
    window_h = f"{frequency_window.total_seconds() / 3600:g} h"
    rules = [
        *bad_values,
        ("invalid_number", pl.col("_invalid").is_not_null(), pl.col("_invalid")),
        ("not_mobile", ~pl.col("number_type").is_in(MOBILE_TYPES),
         pl.format("number type is {}, not mobile", pl.col("number_type"))),
        ("blocked_country", pl.col("_blocked").is_not_null(), pl.col("_blocked")),
        *no_consent,
        ("suppressed", matcher(suppressed).hit("phone_e164"),
         suppression_detail(channel, suppression_reasons)),
        ("frequency_capped",
         matcher(recently_messaged).hit("phone_e164") & pl.lit(category in capped_categories),
         pl.lit(frequency_detail or f"got a marketing message on {channel} in the last {window_h}")),
    ]  # fmt: skip
    reason: Any = pl
    for name, condition, _ in rules:
        reason = reason.when(condition).then(pl.lit(name))
    checked = checked.with_columns(reason.otherwise(None).alias("_reason"))
    # Details only for the rows rejected (formatting them for every row costs more than the checks).
    detail: Any = pl
    for _, condition, text in rules:
        detail = detail.when(condition).then(text)
    refused = checked.filter(pl.col("_reason").is_not_null()).select(
        pl.col("row_number").cast(pl.Int64), pl.col("_reason").alias("reason"), detail.otherwise(None).alias("detail")
    )

    accepted = checked.filter(pl.col("_reason").is_null()).select(*columns, "phone_e164", "region", "number_type")
    rejects = refused
    if dedupe:
        accepted, duplicates = drop_duplicates(accepted, carry)
        rejects = pl.concat([refused, duplicates]).sort("row_number")
    if rejects.height == 0:
        rejects = empty_rejects()
    return accepted, rejects.select(list(REJECTS_SCHEMA)).cast(REJECTS_SCHEMA)


def drop_duplicates(
    accepted: pl.DataFrame, carry: Carry, keep: Sequence[str] = ()
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(accepted, duplicate rejects): the first row (spreadsheet order) with each E.164 number
    wins, across the batches `carry` has seen; later ones are rejected naming it, with the
    columns `keep` after the reject's own. Both keep the order of `accepted`."""
    first = first_rows(accepted["phone_e164"], accepted["row_number"].cast(pl.Int64), carry)
    winning = first == accepted["row_number"]
    duplicates = accepted.with_columns(first.alias("_first")).filter(~winning).select(
        pl.col("row_number").cast(pl.Int64),
        pl.lit("duplicate").alias("reason"),
        pl.format("same number as row {}", pl.col("_first")).alias("detail"),
        *keep,
    )
    return accepted.filter(winning), duplicates


def first_rows(keys: pl.Series, rows: pl.Series, carry: Carry) -> pl.Series:
    """The row that had each key first, in an earlier batch (`carry`) or in this one (`rows`: the
    keys' rows); the keys this batch has first are added to `carry`."""
    frame = pl.DataFrame({"_key": keys, "row_number": rows}).with_row_index("_i")
    plain = keys.str.contains(PLAIN_E164).fill_null(False)
    parts = [(frame, carry.numbers)] if plain.all() else [
        (frame.filter(plain), carry.numbers),
        (frame.filter(~plain), carry.texts),  # not expected of validated numbers (a missing key is one key too)
    ]  # fmt: skip
    found = []
    for part, seen in parts:
        if part.height == 0:
            continue
        key = pl.col("_key").str.slice(1).cast(pl.Int64) if seen is carry.numbers else pl.col("_key")
        ordered = part.with_columns(key).sort("_key", "row_number")
        # Sorted, so a key's first row here is where the key changes.
        start = pl.col("_key").ne_missing(pl.col("_key").shift(1)) | (pl.int_range(pl.len()) == 0)
        here = pl.when(start).then(pl.col("row_number")).forward_fill()
        ordered = ordered.with_columns(_earlier=seen.first_rows(ordered)).with_columns(
            _first=pl.coalesce("_earlier", here)
        )
        seen.add(ordered.filter(pl.col("_first") == pl.col("row_number")).select("_key", "_first"))
        found.append(ordered.select("_i", "_first"))
    if not found:
        return pl.Series("_first", [], dtype=pl.Int64)
    return (found[0] if len(found) == 1 else pl.concat(found)).sort("_i")["_first"]
