"""Consent columns: `opt_in` (yes/no in the spellings people use) and the optional `opt_in_at`
(when the recipient opted in), as Polars expressions with the reject each bad value earns."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl

OPT_IN_VALUES: dict[str, bool] = {
    "true": True, "yes": True, "1": True, "y": True,
    "false": False, "no": False, "0": False, "n": False,
}  # fmt: skip
# Marketing consent older than this is reported as stale_opt_in (when the file has opt_in_at).
DEFAULT_OPT_IN_MAX_AGE = timedelta(days=730)
_DATE_FORMATS = (  # tried in order; a value without a zone is UTC
    "%Y-%m-%dT%H:%M:%S%.f%z",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%dT%H:%M%z",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%d",
)


def parse_opt_in(column: str = "opt_in") -> pl.Expr:
    """True/False for the accepted spellings (any case, spaces ignored), null for anything else."""
    return (
        pl.col(column)
        .str.strip_chars()
        .str.to_lowercase()
        .replace_strict(OPT_IN_VALUES, default=None, return_dtype=pl.Boolean)
    )


def opt_in_text(column: str = "opt_in") -> pl.Expr:
    return pl.col(column).fill_null("").str.strip_chars()


def parse_opt_in_at(column: str = "opt_in_at") -> pl.Expr:
    """A UTC datetime for ISO 8601 dates and times ("2025-03-01", "2025-03-01 10:00",
    "2025-03-01T10:00:00Z", "…+02:00"); null for anything else, including an empty cell."""
    text = pl.col(column).str.strip_chars().str.replace(" ", "T", literal=True).str.replace(r"Z$", "+00:00")
    tries = [
        text.str.to_datetime(
            fmt, strict=False, time_unit="us", time_zone="UTC" if "%z" not in fmt else None
        ).dt.convert_time_zone("UTC")
        if "%z" in fmt
        else text.str.to_datetime(fmt, strict=False, time_unit="us").dt.replace_time_zone("UTC")
        for fmt in _DATE_FORMATS
    ]
    return pl.coalesce(tries)


Rule = tuple[str, pl.Expr, pl.Expr]  # (reject reason, condition, detail), first match wins


def consent_columns(columns: list[str], *, category: str) -> dict[str, pl.Expr]:
    """Parsed consent, to add as columns once before consent_rules reads them."""
    parsed = {"_opt_in": parse_opt_in()}
    if category == "marketing" and "opt_in_at" in columns:
        parsed["_opt_in_at"] = parse_opt_in_at()
    return parsed


def consent_rules(
    columns: list[str], *, category: str, max_age: timedelta | None, now: datetime | None = None
) -> tuple[list[Rule], list[Rule]]:
    """(rules for unusable values, checked before anything else; rules for missing consent,
    checked once the number is known to be sendable), over the consent_columns.

    bad_row for an opt_in value that is not a yes/no; no_opt_in when a marketing row says no;
    for marketing, when the file has opt_in_at: bad_row for a date we cannot read or one in the
    future, stale_opt_in for consent older than `max_age`."""
    opt_in, text = pl.col("_opt_in"), opt_in_text()
    bad: list[Rule] = [
        (
            "bad_row",
            opt_in.is_null(),
            pl.when(text == "")
            .then(pl.lit("opt_in is empty"))
            .otherwise(pl.format("opt_in value '{}' is not one of yes/no, true/false, y/n, 1/0", text)),
        )
    ]
    if category != "marketing":
        return bad, []
    missing: list[Rule] = [("no_opt_in", ~opt_in, pl.format("opt_in is '{}' and the campaign is marketing", text))]
    if "opt_in_at" in columns:
        now = now or datetime.now(UTC)
        given, when = opt_in_text("opt_in_at"), pl.col("_opt_in_at")
        unreadable = pl.col("opt_in_at").str.strip_chars().fill_null("").ne("") & when.is_null()
        bad.append(
            ("bad_row", unreadable, pl.format("opt_in_at value '{}' is not a date (use YYYY-MM-DD or ISO 8601)", given))
        )
        future = when > pl.lit(now + timedelta(days=1))
        bad.append(("bad_row", future, pl.format("opt_in_at '{}' is in the future", given)))
        if max_age is not None:
            missing.append(
                ("stale_opt_in", when < pl.lit(now - max_age),
                 pl.format("opted in on {}, more than {} days ago", when.dt.strftime("%Y-%m-%d"), pl.lit(max_age.days)))
            )  # fmt: skip
    return bad, missing
