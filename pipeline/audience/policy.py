"""Per-channel blocked-country policy, kept as dated data in `data/blocked_countries.csv`.

A campaign spec may override the country entries; calling-code prefixes (regions that share a
country's numbering, such as Crimea under +7 978) always stay.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import get_args

import polars as pl

from pipeline.records import ChannelName

POLICY_FILE = Path(__file__).resolve().parents[1] / "data" / "blocked_countries.csv"
_COLUMNS = ("channel", "kind", "value", "name", "source", "date")
# The channels the pipeline knows (the registry, pipeline/channels, sends over exactly these). A name outside
# them is a typo, never "a channel the file does not name": that would send without any block.
CHANNELS = frozenset(get_args(ChannelName))


class PolicyError(ValueError):
    """The policy file or an override is unusable; the message names the row or the value."""


@dataclass(frozen=True)
class BlockedEntry:
    kind: str  # "country" (ISO 3166 alpha-2) | "calling_code_prefix" (digits after the +)
    value: str
    name: str
    source: str
    date: str = ""

    def describe(self, channel: str) -> str:
        if self.kind == "country":
            where = f"{self.name} ({self.value})" if self.name != self.value else self.value
        else:
            where = f"+{self.value} {self.name}".rstrip()
        source = f" ({self.source})" if self.source else ""
        return f"{where} is blocked for {channel}{source}"


@dataclass(frozen=True)
class BlockedPolicy:
    channel: str
    entries: tuple[BlockedEntry, ...] = field(default_factory=tuple)

    @property
    def countries(self) -> dict[str, BlockedEntry]:
        return {e.value: e for e in self.entries if e.kind == "country"}

    @property
    def prefixes(self) -> dict[str, BlockedEntry]:
        return {e.value: e for e in self.entries if e.kind == "calling_code_prefix"}

    def reason(self, e164: str | None, region: str | None) -> str | None:
        """Why one number is blocked (a detail text), or None when it may be sent to."""
        countries = self.countries
        if region and region in countries:
            return countries[region].describe(self.channel)
        digits = (e164 or "").lstrip("+")
        for prefix, entry in self._longest_first():
            if digits.startswith(prefix):
                return entry.describe(self.channel)
        return None

    def detail_expr(self, e164: str = "phone_e164", region: str = "region") -> pl.Expr:
        """A String expression: the block detail for each row, null when not blocked."""
        result: pl.Expr = pl.lit(None, dtype=pl.String)
        prefixes = self._longest_first()
        if prefixes:
            # One regex for every prefix; longest first, so the longest matching entry wins.
            found = pl.col(e164).str.extract("^\\+(" + "|".join(p for p, _ in prefixes) + ")", 1)
            details = {p: entry.describe(self.channel) for p, entry in prefixes}
            result = found.replace_strict(details, default=None, return_dtype=pl.String)
        countries = {code: e.describe(self.channel) for code, e in self.countries.items()}
        if countries:  # country entries win over prefixes
            by_country = pl.col(region).replace_strict(countries, default=None, return_dtype=pl.String)
            result = pl.coalesce(by_country, result)
        return result

    def _longest_first(self) -> list[tuple[str, BlockedEntry]]:
        return sorted(self.prefixes.items(), key=lambda kv: -len(kv[0]))


def _check_entry(row: dict[str, str], where: str) -> BlockedEntry:
    kind, value = row["kind"].strip(), row["value"].strip()
    if kind == "country":
        if not re.fullmatch(r"[A-Z]{2}", value):
            raise PolicyError(f"{where}: {value!r} is not an ISO 3166 alpha-2 code")
    elif kind == "calling_code_prefix":
        if not re.fullmatch(r"[1-9]\d{0,6}", value):
            raise PolicyError(f"{where}: {value!r} is not a calling-code prefix (digits after the +)")
    else:
        raise PolicyError(f"{where}: kind must be country or calling_code_prefix, not {kind!r}")
    return BlockedEntry(kind, value, row["name"].strip() or value, row["source"].strip(), row["date"].strip())


def _known_channel(channel: str, where: str = "") -> str:
    if channel not in CHANNELS:
        raise PolicyError(f"{where}unknown channel {channel!r} (one of {', '.join(sorted(CHANNELS))})")
    return channel


@lru_cache(maxsize=8)
def load_policy_file(path: Path = POLICY_FILE) -> dict[str, tuple[BlockedEntry, ...]]:
    """Entries by channel, in file order."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read the blocked-country policy: {exc.strerror}") from None
    reader = csv.DictReader(text.splitlines())
    if tuple(reader.fieldnames or ()) != _COLUMNS:
        raise PolicyError(f"{path}: columns must be {','.join(_COLUMNS)}, found {reader.fieldnames}")
    by_channel: dict[str, list[BlockedEntry]] = {}
    for line, row in enumerate(reader, start=2):
        if None in row.values() or None in row:
            raise PolicyError(f"{path}: line {line} does not have {len(_COLUMNS)} fields")
        channel = _known_channel(row["channel"].strip(), f"{path}: line {line}: ")
        by_channel.setdefault(channel, []).append(_check_entry(row, f"{path}: line {line}"))
    return {channel: tuple(entries) for channel, entries in by_channel.items()}


def blocked_policy(channel: str, override: Iterable[str] | None = None, *, path: Path = POLICY_FILE) -> BlockedPolicy:
    """The channel's policy; `override` (alpha-2 codes, e.g. a spec's blocked_countries) replaces
    the file's country entries. An empty override blocks no country; prefixes still apply. Raises PolicyError
    for a channel the pipeline does not know (a known channel the file does not name blocks nothing)."""
    entries = load_policy_file(path).get(_known_channel(channel), ())
    if override is None:
        return BlockedPolicy(channel, entries)
    known = {e.value: e for e in entries if e.kind == "country"}
    countries: list[BlockedEntry] = []
    for raw in override:
        code = raw.strip().upper()
        if not re.fullmatch(r"[A-Z]{2}", code):
            raise PolicyError(f"blocked_countries: {raw!r} is not an ISO 3166 alpha-2 code")
        name = known[code].name if code in known else code
        countries.append(BlockedEntry("country", code, name, "campaign spec"))
    prefixes = tuple(e for e in entries if e.kind != "country")
    return BlockedPolicy(channel, tuple(countries) + prefixes)
