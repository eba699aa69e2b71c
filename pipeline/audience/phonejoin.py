"""The metadata's parsing regexes joined over every region, so that one expression serves rows of
every region at once: one regex per kind of pattern (international prefix, national prefix, the
national prefixes that come with a transform rule, the general pattern) holds every region's
pattern, each behind its region's key, and is matched against "<key>:<digits>". The key in front
of each branch means only the row's own region's pattern can match (keys are distinct and a
branch is entered only past its key and the ":"), so every answer is the region's own pattern's.

Why: the parse used to run one plan per region present (~240 in a batch of 250k numbers), and
those plans cost ~0.3 s of CPU per batch whatever its size (~40 expressions each, ~20 µs of
overhead per expression and plan). One plan over all rows costs its expressions once, and the
four joined regexes stay compiled (Polars keeps 32 per thread) where the per-region ones were
compiled again in every batch. The number types stay per region (phoneparse._type_in_region):
joined, their eleven large regexes cost more per row than the plans they save (measured)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from re import _constants, _parser  # type: ignore[attr-defined]

import polars as pl

from pipeline.audience.phonemeta import RegionMeta, metadata

_ANCHORED = re.compile(r"\(\?-u\)\^\(\?:(.*)\)(\$?)", re.DOTALL)  # phonemeta.anchored's output
_TEMPLATE = re.compile(r"(\d*)\$\{(\d+)\}")  # a transform rule: digits, then one group
PREFIXES = ("international_prefix", "national_prefix", "transformed_prefix")


@dataclass(frozen=True)
class Joined:
    pattern: str
    groups: dict[str, int]  # key -> the number of the group before its branch's first group


def _pattern(m: RegionMeta, kind: str) -> str | None:
    """The region's anchored pattern of `kind`, if it has one."""
    if kind == "transformed_prefix":  # the national prefixes that come with a transform rule
        return m.national_prefix if m.transform else None
    if kind == "general":
        return m.general
    return getattr(m, kind)


@cache
def joined(kind: str) -> Joined | None:
    """Every region's `kind` pattern in one regex; None when no region has one."""
    branches: list[str] = []
    groups: dict[str, int] = {}
    whole = kind not in PREFIXES
    seen = 0
    for key, m in metadata().regions.items():
        pattern = _pattern(m, kind)
        if pattern is None:
            continue
        found = _ANCHORED.fullmatch(pattern)
        if found is None or bool(found.group(2)) != whole:
            raise ValueError(f"{key}: not an anchored {kind} pattern: {pattern[:40]!r}")
        inner = found.group(1)
        branches.append(f"{re.escape(key)}:(?:{inner})")
        groups[key] = seen
        seen += re.compile(inner).groups
    if not branches:
        return None
    return Joined("(?-u)^(?:" + "|".join(branches) + ")" + ("$" if whole else ""), groups)


def keyed(key: pl.Expr, digits: pl.Expr) -> pl.Expr:
    return pl.concat_str(key, pl.lit(":"), digits)


def in_mask(size: pl.Expr, mask: pl.Expr) -> pl.Expr:
    """Whether bit `size` (a length up to MAX_LENGTH) is set in `mask`."""
    return (mask & pl.lit(2, dtype=pl.UInt64).pow(size.cast(pl.UInt64))) != 0


def strip_prefix(kind: str, key: pl.Expr, digits: pl.Expr) -> pl.Expr:
    """`digits` after what the `kind` prefix pattern of each row's region matches at their start
    (re.match), null if nothing matches or the region has no such pattern. (A replacement
    without groups runs the regex's fast search; extracting the match would ask for groups.)"""
    found = joined(kind)
    if found is None:
        return pl.lit(None, dtype=pl.String)
    marked = keyed(key, digits)
    rest = marked.str.replace(found.pattern, "", n=1)
    return pl.when(rest != marked).then(rest)  # a match takes "<key>:" away with it


def _group(node: object, number: int) -> _parser.SubPattern | None:
    """The subpattern of group `number` in a parsed pattern."""
    if isinstance(node, _parser.SubPattern):
        for op, arguments in node.data:
            if op is _constants.SUBPATTERN and arguments[0] == number:
                return arguments[3]
            if (found := _group(arguments, number)) is not None:
                return found
    elif isinstance(node, (tuple, list)):
        for each in node:
            if (found := _group(each, number)) is not None:
                return found
    return None


@cache
def _transforms() -> tuple[dict[str, str], str]:
    """For the regions with a transform rule: key -> the digits of the rule, and one replacement
    template naming each region's rule group in joined("transformed_prefix")."""
    found = joined("transformed_prefix")
    assert found is not None
    digits, template = {}, []
    for key, offset in found.groups.items():
        m = metadata().regions[key]
        rule = _TEMPLATE.fullmatch(m.transform or "")
        inner = _ANCHORED.fullmatch(m.national_prefix or "")
        last = _group(_parser.parse(inner.group(1)), m.national_prefix_groups) if inner else None
        # Every rule in phonenumbers' metadata is <digits>${last group}, and the last group never
        # matches empty text: so "the last group took part" is "the rule's group is not empty".
        if rule is None or int(rule.group(2)) != m.national_prefix_groups or last is None or last.getwidth()[0] == 0:
            raise ValueError(f"{key}: unsupported national prefix transform rule {m.transform!r}")
        digits[key] = rule.group(1)
        template.append(f"${{{offset + m.national_prefix_groups}}}")
    return digits, "".join(template)


def transformed(key: pl.Expr, digits: pl.Expr, rest: pl.Expr) -> pl.Expr:
    """_maybe_strip_national_prefix_carrier_code's transform: where the row's region has a
    transform rule and the last group of its national prefix pattern took part in the match
    (`rest`: the digits after the match), the digits with the match replaced by the rule; null
    elsewhere."""
    found = joined("transformed_prefix")
    if found is None:
        return pl.lit(None, dtype=pl.String)
    rule_digits, template = _transforms()
    # Only the row's own branch can match, so the other regions' groups in the template are empty.
    marked = keyed(pl.when(key.is_in(list(rule_digits))).then(key), digits)
    group_and_rest = marked.str.replace(found.pattern, template, n=1)
    took_part = group_and_rest.str.len_bytes() > rest.str.len_bytes()
    rule = key.replace_strict(rule_digits, default=None, return_dtype=pl.String)
    return pl.when(took_part.fill_null(False)).then(pl.concat_str(rule, group_and_rest))


def matches(kind: str, key: pl.Expr, digits: pl.Expr) -> pl.Expr:
    """_match_national_number(digits, <key's region's `kind` desc>): the whole pattern matches
    (no length check). Null where `digits` is null."""
    found = joined(kind)
    return pl.lit(False) if found is None else keyed(key, digits).str.contains(found.pattern)
