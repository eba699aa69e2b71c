"""Opening an audience file and checking its header row: the one error an unusable file raises
(AudienceError), the file checks (a regular file, not a link), and the header's column names."""

from __future__ import annotations

import csv
import errno
import os
import re
import stat
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from pipeline.audience.blocks import quote_problem

# Columns the stages add (or use internally); an upload may not bring its own.
RESERVED_COLUMNS = frozenset(
    {"row_number", "phone_e164", "region", "number_type", "text", "params_json", "segments", "encoding"}
    | {"_fields", "_bytes", "_check", "_problem", "_phone", "_country", "_invalid", "_blocked", "_reason", "_detail"}
    | {"_first"}
)

class AudienceError(ValueError):
    """An audience file that cannot be used at all; the message names the file and the problem."""


def decode(path: Path, data: bytes, first_line: int) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        line = first_line + data.count(b"\n", 0, exc.start)
        raise AudienceError(
            f"{path}: line {line} is not valid UTF-8 (byte 0x{data[exc.start]:02X} at column "
            f"{exc.start - line_start + 1}); save the file as CSV UTF-8"
        ) from None


def _looks_like_data(name: str) -> bool:
    return bool(re.fullmatch(r"[+(]?\d[\d\s().\-]{5,}", name)) or name.lower() in ("yes", "no", "true", "false")


def _shown(names: list[str]) -> str:
    """The header's names for an error message, unless the line does not look like a header row: the
    content of a file that is not an audience is not echoed (nor data, such as a phone number)."""
    if 2 <= len(names) <= 50 and all(len(n) <= 64 and n.isprintable() and not _looks_like_data(n) for n in names):
        return f"columns found: {names}"
    return "the first line does not look like a header row of column names (not shown)"


def check_header(path: Path, line: str, required: Sequence[str], max_columns: int) -> list[str]:
    try:
        first = next(csv.reader([line], strict=True), [])
    except csv.Error as exc:
        found = quote_problem(line)
        raise AudienceError(f"{path}: the header row: {found[3] if found else exc}") from None
    names = [name.strip() for name in first]
    if len(names) > max_columns:
        raise AudienceError(f"{path}: the header has {len(names):,} columns, over the limit of {max_columns:,}")
    if not any(names):
        raise AudienceError(f"{path}: the first line must be a header row naming the columns")
    missing = [c for c in required if c not in names]
    if missing:
        hint = ""
        if len(names) == 1 and (";" in names[0] or "\t" in names[0]):
            hint = " (is the separator ';' or a tab? save as comma-separated CSV)"
        elif any(_looks_like_data(n) for n in names):
            hint = " (the first line looks like data: the file needs a header row naming the columns)"
        raise AudienceError(f"{path}: missing required column(s) {missing}; {_shown(names)}{hint}")
    if any(not name for name in names):
        raise AudienceError(f"{path}: the header has an empty column name ({_shown(names)})")
    reserved = [n for n in names if n in RESERVED_COLUMNS]
    if reserved:
        raise AudienceError(f"{path}: rename column(s) {reserved}: the pipeline adds columns of those names")
    duplicates = sorted(n for n, count in Counter(names).items() if count > 1)
    if duplicates:
        raise AudienceError(f"{path}: the header repeats column(s) {duplicates}")
    return names


def csv_problem(text: str, message: str, first_line: int) -> str:
    """Polars' parse error, shortened and pointed at a line where we can find it."""
    match = re.search(r"Field `(.*?)` is not properly escaped", message, re.DOTALL)
    if match:
        value = match.group(1)
        at = text.find(value)
        where = f"line {first_line + text.count(chr(10), 0, at)}: " if at >= 0 else ""
        return f"{where}field {value[:60]!r} has a stray or unbalanced double quote"
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return lines[0] if lines else "unknown parse error"


def open_file(path: Path) -> BinaryIO:
    """`path` opened for reading. A symbolic link or anything but a regular file (a FIFO, a device) is
    refused before a byte is read: dropped into the inbox, a link could otherwise show another file."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise AudienceError(f"{path}: is a symbolic link; give the audience file itself") from None
        raise AudienceError(f"{path}: cannot read the audience file: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise AudienceError(f"{path}: not a regular file (a directory, pipe or device cannot be an audience)")
    return os.fdopen(fd, "rb")
