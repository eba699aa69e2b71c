"""The internal numbers or addresses a test send goes to ("seeds"), read from a CSV file or a form field, bounded,
each checked for the campaign's channel. Bad input is one line naming the source, the row and the field.

Settings (environment, with defaults): CAMPAIGN_TEST_SEND_MAX_SEEDS (10), CAMPAIGN_TEST_SEND_MAX_ROWS (audience
rows per test, 10), CAMPAIGN_TEST_SEND_MAX_MESSAGES (rows x seeds, 50), CAMPAIGN_TEST_SEND_SEEDS_MAX_BYTES (the
seeds file or field, 65536), CAMPAIGN_TEST_SEND_FIELD_MAX_CHARS (one seeds field, 256).
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import phonenumbers

from pipeline.render.prepare_ids import uses_ids

ADDRESS_COLUMNS = ("to", "phone", "email", "address", "user_id")  # the first one present names the seed
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_ID = re.compile(r"[A-Za-z0-9_.:=+/-]+")  # PSIDs, Viber ids


class SeedError(ValueError):
    """Unusable seeds or test-send bounds: one line naming source, row and field."""


@dataclass(frozen=True)
class SendLimits:
    max_seeds: int = 10
    max_rows: int = 10
    max_messages: int = 50
    seeds_max_bytes: int = 65536
    field_max_chars: int = 256

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SendLimits:
        env = os.environ if environ is None else environ
        values = {}
        for name in cls.__dataclass_fields__:
            raw = env.get(f"CAMPAIGN_TEST_SEND_{name.upper()}")
            if raw is not None:
                try:
                    values[name] = int(raw)
                except ValueError:
                    raise SeedError(f"CAMPAIGN_TEST_SEND_{name.upper()}: {raw!r} is not a whole number") from None
        return cls(**values)


@dataclass(frozen=True)
class Seed:
    address: str  # E.164 for phone channels, else the channel's id or e-mail address
    country: str | None  # the number's region (what the provider prices the test message by)
    name: str = ""


def read_seeds_file(path: Path, channel: str, limits: SendLimits) -> list[Seed]:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise SeedError(f"{path}: cannot read the seeds file ({exc.strerror})") from None
    if size > limits.seeds_max_bytes:
        raise SeedError(f"{path}: {size} bytes, more than the {limits.seeds_max_bytes} a seeds file may have "
                        "(CAMPAIGN_TEST_SEND_SEEDS_MAX_BYTES)")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise SeedError(f"{path}: not UTF-8 text") from None
    reader = csv.DictReader(io.StringIO(text))
    column = next((c for c in ADDRESS_COLUMNS if c in (reader.fieldnames or [])), None)
    if column is None:
        raise SeedError(f"{path}: row 1: no address column (one of {', '.join(ADDRESS_COLUMNS)})")
    rows = []
    try:
        for record in reader:
            rows.append((reader.line_num, column, record.get(column) or "", record.get("name") or ""))
            if len(rows) > limits.max_seeds:
                break
    except csv.Error as exc:
        raise SeedError(f"{path}: row {reader.line_num}: {exc}") from None
    return check_seeds(rows, channel, str(path), limits)


def read_seeds_text(text: str, channel: str, limits: SendLimits, source: str = "seeds field") -> list[Seed]:
    """One seed per line (a form field); blank lines skipped."""
    if len(text.encode()) > limits.seeds_max_bytes:
        raise SeedError(f"{source}: more than {limits.seeds_max_bytes} bytes (CAMPAIGN_TEST_SEND_SEEDS_MAX_BYTES)")
    rows = [(n, "seed", line.strip(), "") for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    return check_seeds(rows, channel, source, limits)


def check_seeds(rows: list[tuple[int, str, str, str]], channel: str, source: str, limits: SendLimits) -> list[Seed]:
    """(row, field, value, name) → distinct seeds in order; refuses more than `max_seeds` and any bad one."""
    if not rows:
        raise SeedError(f"{source}: no seeds")
    if len(rows) > limits.max_seeds:
        raise SeedError(f"{source}: more than {limits.max_seeds} seeds (CAMPAIGN_TEST_SEND_MAX_SEEDS)")
    seeds: dict[str, Seed] = {}
    for row, field, value, name in rows:
        where = f"{source}: row {row}, field {field}"
        if len(value) > limits.field_max_chars or len(name) > limits.field_max_chars:
            raise SeedError(f"{where}: longer than {limits.field_max_chars} characters "
                            "(CAMPAIGN_TEST_SEND_FIELD_MAX_CHARS)")
        seed = _seed(value.strip(), channel, where)
        seeds.setdefault(seed.address, Seed(seed.address, seed.country, name.strip()))
    return list(seeds.values())


def _seed(value: str, channel: str, where: str) -> Seed:
    if not value:
        raise SeedError(f"{where}: empty")
    if uses_ids(channel):
        pattern = _EMAIL if channel == "email" else _ID
        if not pattern.fullmatch(value):
            kind = "an e-mail address" if channel == "email" else f"a {channel} id"
            raise SeedError(f"{where}: not {kind}")
        return Seed(value, None)
    try:
        number = phonenumbers.parse(value, None)  # internal numbers are written in full, with their +
    except phonenumbers.NumberParseException:
        raise SeedError(f"{where}: not a phone number in international form (+CC...)") from None
    if not phonenumbers.is_valid_number(number):
        raise SeedError(f"{where}: not a valid phone number")
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return Seed(e164, phonenumbers.region_code_for_number(number))
