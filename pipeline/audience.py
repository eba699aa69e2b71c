"""Loading an audience CSV: every column as text, spreadsheet row numbers kept, malformed rows
turned into rejects and malformed files into one clear AudienceError (never a traceback)."""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from pipeline.records import empty_rejects, make_rejects

# Columns the stages add (or use internally); an upload may not bring its own.
RESERVED_COLUMNS = frozenset(
    {"row_number", "phone_e164", "region", "number_type", "text", "params_json"}
    | {"_fields", "_problem", "_phone", "_country", "_invalid", "_blocked", "_reason", "_detail", "_first"}
)


class AudienceError(ValueError):
    """An audience file that cannot be used at all; the message names the file and the problem."""


@dataclass(frozen=True)
class Loaded:
    frame: pl.DataFrame  # row_number (Int64, header = row 1) + every CSV column as String
    rejects: pl.DataFrame  # REJECTS_SCHEMA
    rows_read: int
    # The rejected rows as read (row_number + columns), so later stages can report their phone.
    rejected_rows: pl.DataFrame = field(default_factory=pl.DataFrame)


def _decode(path: Path, data: bytes) -> str:
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise AudienceError(f"{path}: the file is UTF-16; save it as CSV UTF-8")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        line = data.count(b"\n", 0, exc.start) + 1
        raise AudienceError(
            f"{path}: line {line} is not valid UTF-8 (byte 0x{data[exc.start]:02X} at column "
            f"{exc.start - line_start + 1}); save the file as CSV UTF-8"
        ) from None


def _header(path: Path, text: str) -> list[str]:
    first = next(csv.reader(io.StringIO(text)), [])
    names = [name.strip() for name in first]
    if not any(names):
        raise AudienceError(f"{path}: the first line must be a header row naming the columns")
    if any(not name for name in names):
        raise AudienceError(f"{path}: the header has an empty column name (columns found: {names})")
    reserved = [n for n in names if n in RESERVED_COLUMNS]
    if reserved:
        raise AudienceError(f"{path}: rename column(s) {reserved}: the pipeline adds columns of those names")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise AudienceError(f"{path}: the header repeats column(s) {duplicates}")
    return names


def _field_counts(text: str) -> list[int]:
    """Fields per data record (0 for a blank line), in record order, header excluded."""
    if '"' not in text:
        # Without quotes a record is one physical line: count separators, vectorised.
        lines = text.split("\n")
        if text.endswith("\n"):
            lines.pop()
        records = pl.Series(lines[1:], dtype=pl.String).str.strip_suffix("\r")
        counts = (records.str.count_matches(",", literal=True) + 1) * (records != "").cast(pl.Int64)
        return counts.to_list()
    # Quoted fields may hold separators and newlines: let the csv module find the records.
    return [len(record) for record in csv.reader(io.StringIO(text, newline=""))][1:]


def _csv_problem(text: str, message: str) -> str:
    """Polars' parse error, shortened and pointed at a line where we can find it."""
    match = re.search(r"Field `(.*?)` is not properly escaped", message, re.DOTALL)
    if match:
        value = match.group(1)
        at = text.find(value)
        where = f"line {text.count(chr(10), 0, at) + 1}: " if at >= 0 else ""
        return f"{where}field {value[:60]!r} has a stray or unbalanced double quote"
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return lines[0] if lines else "unknown parse error"


def load_audience(path: Path | str, *, required: Sequence[str] = ("phone", "opt_in")) -> Loaded:
    """Reads `path`; rows with an empty phone or a ragged number of fields become `bad_row`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AudienceError(f"{path}: cannot read the audience file: {exc.strerror}") from None
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    text = _decode(path, data)
    if not text.strip():
        raise AudienceError(f"{path}: the file is empty (expected a header row and data rows)")

    names = _header(path, text)
    missing = [c for c in required if c not in names]
    if missing:
        hint = " (is the separator ';'? save as comma-separated CSV)" if len(names) == 1 and ";" in names[0] else ""
        raise AudienceError(f"{path}: missing required column(s) {missing}; columns found: {names}{hint}")

    try:
        frame = pl.read_csv(
            data,
            has_header=True,
            new_columns=names,
            infer_schema=False,
            truncate_ragged_lines=True,  # ragged rows are counted below and rejected one by one
            raise_if_empty=False,
        )
    except pl.exceptions.PolarsError as exc:
        raise AudienceError(f"{path}: not a readable CSV file: {_csv_problem(text, str(exc))}") from None
    if frame.width != len(names):
        raise AudienceError(f"{path}: expected {len(names)} columns, the CSV reader found {frame.width}")
    frame = frame.with_row_index("row_number", offset=2).with_columns(pl.col("row_number").cast(pl.Int64))
    rows_read = frame.height

    counts = _field_counts(text)
    if len(counts) != rows_read:
        raise AudienceError(
            f"{path}: malformed CSV (found {len(counts)} records but read {rows_read} rows); "
            "check for unbalanced quotes"
        )
    fields = pl.Series("_fields", counts, dtype=pl.Int64)
    frame = frame.with_columns(fields)

    # First matching problem wins: a blank line, a ragged row, then an empty phone.
    width = len(names)
    problem = (
        pl.when(pl.col("_fields") == 0)
        .then(pl.lit("row is empty"))
        .when(pl.col("_fields") != width)
        .then(pl.format("row has {} field(s), the header has " + str(width), pl.col("_fields")))
    )
    if "phone" in names:
        problem = problem.when(pl.col("phone").str.strip_chars().fill_null("") == "").then(pl.lit("phone is empty"))
    problem = problem.otherwise(None)
    frame = frame.with_columns(problem.alias("_problem")).drop("_fields")
    bad = frame.filter(pl.col("_problem").is_not_null())
    rejects = make_rejects(bad, "bad_row", pl.col("_problem")) if bad.height else empty_rejects()
    return Loaded(
        frame=frame.filter(pl.col("_problem").is_null()).drop("_problem"),
        rejects=rejects,
        rows_read=rows_read,
        rejected_rows=bad.drop("_problem"),
    )
