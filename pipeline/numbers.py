"""Validating the audience's phone numbers and consent: E.164, valid, mobile, allowed country,
opted in, not suppressed, not a duplicate. phonenumbers is the authority on numbers; it is called
once per unique (phone, country) pair and the answers are joined back to the rows."""

from __future__ import annotations

import re
from collections.abc import Iterable

import phonenumbers
import polars as pl
from phonenumbers import NumberParseException, PhoneNumberFormat, PhoneNumberType, ValidationResult

from pipeline.policy import BlockedPolicy, blocked_policy
from pipeline.records import REJECTS_SCHEMA, empty_rejects

TYPE_NAMES: dict[int, str] = {v: k.lower() for k, v in vars(PhoneNumberType).items() if k.isupper()}
MOBILE_TYPES = ("mobile", "fixed_line_or_mobile")
OPT_IN_VALUES: dict[str, bool] = {
    "true": True, "yes": True, "1": True, "y": True,
    "false": False, "no": False, "0": False, "n": False,
}  # fmt: skip

_PARSE_ERRORS = {
    NumberParseException.INVALID_COUNTRY_CODE: "unknown country calling code",
    NumberParseException.NOT_A_NUMBER: "not a phone number",
    NumberParseException.TOO_SHORT_AFTER_IDD: "too short",
    NumberParseException.TOO_SHORT_NSN: "too short",
    NumberParseException.TOO_LONG: "too long",
}
# What a spreadsheet makes of a long number typed into a numeric cell: 4.47911E+11.
_SCIENTIFIC = re.compile(r"\d+([.,]\d+)?[eE]\+?\d+")
_PUNCTUATION = re.compile(r"[\s\-.()/\[\]]")

Classified = tuple[str | None, str | None, str | None, str | None]  # e164, region, type, error


def _invalid_detail(number: phonenumbers.PhoneNumber, region: str | None) -> str:
    cc = number.country_code
    if region is None or phonenumbers.country_code_for_region(region) != cc:
        region = phonenumbers.region_code_for_country_code(cc)
    possible = phonenumbers.is_possible_number_with_reason(number)
    if possible == ValidationResult.INVALID_COUNTRY_CODE or region == "ZZ":
        return f"unknown country calling code +{cc}"
    if possible not in (ValidationResult.TOO_SHORT, ValidationResult.TOO_LONG):
        # The length fits some number type (often a local-only fixed line); judge it as a mobile,
        # which is what messaging needs.
        possible = phonenumbers.is_possible_number_for_type_with_reason(number, PhoneNumberType.MOBILE)
    if possible == ValidationResult.TOO_SHORT:
        return f"too short for {region}"
    if possible == ValidationResult.TOO_LONG:
        return f"too long for {region}"
    return f"not a valid number for {region}"


def _try(text: str, region: str | None) -> Classified:
    try:
        number = phonenumbers.parse(text, region)
    except NumberParseException as exc:
        return None, None, None, _PARSE_ERRORS.get(exc.error_type, "not a phone number")
    if not phonenumbers.is_valid_number(number):
        return None, None, None, _invalid_detail(number, region)
    return (
        phonenumbers.format_number(number, PhoneNumberFormat.E164),
        phonenumbers.region_code_for_number(number),
        TYPE_NAMES.get(phonenumbers.number_type(number), "unknown"),
        None,
    )


def classify_number(phone: str, country: str) -> Classified:
    """(E.164, region, number type, None) for a valid number, else (None, None, None, why).

    `country` is the row's ISO 3166 alpha-2 code ("" when unknown); it only matters for numbers
    written without an international prefix.
    """
    raw = phone.strip().lstrip("'").strip()  # a leading ' is how spreadsheets keep "+44…" as text
    if not raw:
        return None, None, None, "phone is empty"
    if _SCIENTIFIC.fullmatch(raw):
        return None, None, None, "in scientific notation (a spreadsheet turned it into a number)"
    if any(ch.isalpha() for ch in raw):
        return None, None, None, "contains letters"
    compact = _PUNCTUATION.sub("", raw)
    if not re.fullmatch(r"\+?\d+", compact):
        return None, None, None, "not a phone number"
    known_country = country in phonenumbers.SUPPORTED_REGIONS
    if raw.startswith("+"):
        return _try(raw, None)
    if compact.startswith("00"):
        # phonenumbers reads 00 as the international prefix only where the region dials it
        # (GB, DE…, not US's 011); otherwise the number is meant as +<digits>.
        if known_country:
            found = _try(raw, country)
            if found[3] is None:
                return found
        return _try("+" + compact[2:], None)
    if not country:
        return None, None, None, "needs a country column: not in international format (+…) and no country"
    if not known_country:
        hint = " (did you mean GB?)" if country == "UK" else ""
        return None, None, None, f"unknown country {country!r}{hint}: use ISO 3166 alpha-2 codes"
    return _try(raw, country)


def parse_opt_in(column: str = "opt_in") -> pl.Expr:
    """True/False for the accepted spellings (any case, spaces ignored), null for anything else."""
    return (
        pl.col(column)
        .str.strip_chars()
        .str.to_lowercase()
        .replace_strict(OPT_IN_VALUES, default=None, return_dtype=pl.Boolean)
    )


def _normalise_suppressed(addresses: Iterable[str]) -> list[str]:
    digits = (re.sub(r"\D", "", a) for a in addresses)
    return sorted({"+" + d for d in digits if d})


def validate_numbers(
    frame: pl.DataFrame,
    *,
    channel: str,
    category: str,
    policy: BlockedPolicy | None = None,
    suppressed: Iterable[str] = frozenset(),
    default_country: str | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(accepted, rejects). Accepted rows gain phone_e164, region and number_type; each rejected
    row gets the first reason of: bad_row, invalid_number, not_mobile, blocked_country,
    no_opt_in (marketing only), suppressed, duplicate (the first accepted row wins)."""
    for needed in ("row_number", "phone", "opt_in"):
        if needed not in frame.columns:
            raise ValueError(f"validate_numbers: the audience has no {needed!r} column")
    if policy is None:
        policy = blocked_policy(channel)
    columns = frame.columns
    default = (default_country or "").strip().upper()

    country = (
        pl.col("country").str.strip_chars().str.to_uppercase().fill_null("")
        if "country" in columns
        else pl.lit("", dtype=pl.String)
    )
    keyed = frame.with_columns(
        pl.col("phone").fill_null("").alias("_phone"),
        pl.when(country == "").then(pl.lit(default)).otherwise(country).alias("_country"),
    )
    # One phonenumbers call per unique (phone, country): duplicates and re-runs cost nothing.
    pairs = keyed.select("_phone", "_country").unique()
    answers = [classify_number(p, c) for p, c in pairs.iter_rows()]
    lookup = pairs.with_columns(
        pl.Series("phone_e164", [a[0] for a in answers], dtype=pl.String),
        pl.Series("region", [a[1] for a in answers], dtype=pl.String),
        pl.Series("number_type", [a[2] for a in answers], dtype=pl.String),
        pl.Series("_invalid", [a[3] for a in answers], dtype=pl.String),
    )
    checked = keyed.join(lookup, on=["_phone", "_country"], how="left", maintain_order="left")

    opt_in = parse_opt_in()
    opt_in_text = pl.col("opt_in").fill_null("").str.strip_chars()
    suppressed_list = _normalise_suppressed(suppressed)
    reason = (
        pl.when(opt_in.is_null())
        .then(pl.lit("bad_row"))
        .when(pl.col("_invalid").is_not_null())
        .then(pl.lit("invalid_number"))
        .when(~pl.col("number_type").is_in(MOBILE_TYPES))
        .then(pl.lit("not_mobile"))
        .when(pl.col("_blocked").is_not_null())
        .then(pl.lit("blocked_country"))
        .when(~opt_in & pl.lit(category == "marketing"))
        .then(pl.lit("no_opt_in"))
        .when(pl.col("phone_e164").is_in(suppressed_list))
        .then(pl.lit("suppressed"))
        .otherwise(None)
    )
    detail = (
        pl.when(pl.col("_reason") == "bad_row")
        .then(
            pl.when(opt_in_text == "")
            .then(pl.lit("opt_in is empty"))
            .otherwise(pl.format("opt_in value '{}' is not one of yes/no, true/false, y/n, 1/0", opt_in_text))
        )
        .when(pl.col("_reason") == "invalid_number")
        .then(pl.col("_invalid"))
        .when(pl.col("_reason") == "not_mobile")
        .then(pl.format("number type is {}, not mobile", pl.col("number_type")))
        .when(pl.col("_reason") == "blocked_country")
        .then(pl.col("_blocked"))
        .when(pl.col("_reason") == "no_opt_in")
        .then(pl.format("opt_in is '{}' and the campaign is marketing", opt_in_text))
        .when(pl.col("_reason") == "suppressed")
        .then(pl.lit(f"on the {channel} suppression list (opted out earlier)"))
        .otherwise(None)
    )
    checked = (
        checked.with_columns(policy.detail_expr().alias("_blocked"))
        .with_columns(reason.alias("_reason"))
        .with_columns(detail.alias("_detail"))
    )

    passed = checked.filter(pl.col("_reason").is_null())
    # The first row (spreadsheet order) with a number wins; later ones name it.
    passed = passed.with_columns(pl.col("row_number").min().over("phone_e164").alias("_first"))
    duplicates = passed.filter(pl.col("row_number") != pl.col("_first"))
    accepted = passed.filter(pl.col("row_number") == pl.col("_first"))

    rejects = pl.concat(
        [
            checked.filter(pl.col("_reason").is_not_null()).select(
                pl.col("row_number").cast(pl.Int64),
                pl.col("_reason").alias("reason"),
                pl.col("_detail").alias("detail"),
            ),
            duplicates.select(
                pl.col("row_number").cast(pl.Int64),
                pl.lit("duplicate").alias("reason"),
                pl.format("same number as row {}", pl.col("_first")).alias("detail"),
            ),
        ]
    ).sort("row_number")
    if rejects.height == 0:
        rejects = empty_rejects()
    accepted = accepted.select(*columns, "phone_e164", "region", "number_type")
    return accepted, rejects.select(list(REJECTS_SCHEMA)).cast(REJECTS_SCHEMA)
