"""The metadata's regexes joined over every region, so that one expression serves rows of every
region at once: one regex per kind of pattern (international prefix, national prefix, general,
each number type) holds every region's pattern, each behind its region's key, and is matched
against "<key>:<digits>". The key in front of each branch means only the row's own region's
pattern can match (keys are distinct and a branch is entered only past its key and the ":"), so
every answer is the region's own pattern's answer.

Why: the parse used to run one plan per region present (~240 in a batch of 250k numbers), and
those plans cost ~0.35 s of CPU per batch whatever its size (~40 expressions each, ~20 µs of
overhead per expression and plan). One plan over all rows costs its expressions once. The ~15
joined regexes also stay compiled for the process's life, where Polars (32 compiled regexes per
thread) compiled the ~1,500 per-region ones again in every batch."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from re import _constants, _parser  # type: ignore[attr-defined]

import polars as pl

from pipeline.audience.phonemeta import _SPECIAL_TYPES, MAX_LENGTH, RegionMeta, metadata

_ANCHORED = re.compile(r"\(\?-u\)\^\(\?:(.*)\)(\$?)", re.DOTALL)  # phonemeta.anchored's output
_TEMPLATE = re.compile(r"(\d*)\$\{(\d+)\}")  # a transform rule: digits, then one group
_EVERY_LENGTH = (1 << (MAX_LENGTH + 1)) - 1
FLOM = "fixed_line_or_mobile"
PREFIXES = ("international_prefix", "national_prefix", "transformed_prefix")
DESCS = ("general", *_SPECIAL_TYPES, "fixed_line", "mobile")


@dataclass(frozen=True)
class Joined:
    pattern: str
    groups: dict[str, int]  # key -> the number of the group before its branch's first group
    lengths: dict[str, int]  # key -> its possible lengths as a bit mask (descs only)


def _pattern(m: RegionMeta, kind: str) -> tuple[str | None, tuple[int, ...]]:
    """The region's anchored pattern of `kind` and the lengths it allows (empty: any)."""
    if kind == "transformed_prefix":  # the national prefixes that come with a transform rule
        return (m.national_prefix if m.transform else None), ()
    if kind in PREFIXES:
        return getattr(m, kind), ()
    if kind == "any_special":  # whether any special type's pattern matches (lengths aside)
        inner = [_ANCHORED.fullmatch(desc.pattern).group(1) for _, desc in m.special]  # type: ignore[union-attr]
        return (f"(?-u)^(?:{'|'.join(inner)})$" if inner else None), ()
    if kind == "general":
        desc = m.general_desc
    elif kind == "fixed_line":
        desc = m.fixed_line
    elif kind == "mobile":  # a region whose mobile pattern is its fixed-line one asks only the latter
        desc = None if m.same_mobile_and_fixed_line else m.mobile
    else:
        desc = dict(m.special).get(kind)
    return (desc.pattern, desc.lengths) if desc else (None, ())


@cache
def joined(kind: str) -> Joined | None:
    """Every region's `kind` pattern in one regex; None when no region has one."""
    branches: list[str] = []
    groups: dict[str, int] = {}
    lengths: dict[str, int] = {}
    whole = kind not in PREFIXES
    seen = 0
    for key, m in metadata().regions.items():
        pattern, allowed = _pattern(m, kind)
        if pattern is None:
            continue
        found = _ANCHORED.fullmatch(pattern)
        if found is None or bool(found.group(2)) != whole:
            raise ValueError(f"{key}: not an anchored {kind} pattern: {pattern[:40]!r}")
        inner = found.group(1)
        branches.append(f"{re.escape(key)}:(?:{inner})")
        groups[key] = seen
        seen += re.compile(inner).groups
        lengths[key] = sum(1 << n for n in allowed) if allowed else _EVERY_LENGTH
    if not branches:
        return None
    return Joined("(?-u)^(?:" + "|".join(branches) + ")" + ("$" if whole else ""), groups, lengths)


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


@cache
def _region_index() -> dict[str, int]:
    return {key: n for n, key in enumerate(metadata().regions)}


def _masks(kind: str) -> pl.Series:
    """Each region's `kind` lengths mask, by region index (0: the region has no such desc)."""
    found = joined(kind)
    assert found is not None
    return pl.Series([found.lengths.get(key, 0) for key in _region_index()], dtype=pl.UInt64)


@cache
def _same_keys() -> list[str]:
    return sorted(k for k, m in metadata().regions.items() if m.same_mobile_and_fixed_line)


TYPE_TEMPORARY = ["_tk", "_tbit", "_tri", "_t_special", *(f"_t_{kind}" for kind in DESCS)]


def type_steps(key: pl.Expr, digits: pl.Expr, out: str) -> tuple[dict[str, pl.Expr], ...]:
    """_number_type_helper(digits, <key's region>) into column `out` (null for UNKNOWN), as
    with_columns steps; drop TYPE_TEMPORARY afterwards. _is_number_matching_desc of each kind:
    a possible length and a whole-pattern match. The row's key, length bit and region index
    are columns of their own: each of the eleven checks reads them."""
    kinds = [kind for kind in DESCS if joined(kind) is not None]
    first = {
        "_tk": keyed(key, digits),
        "_tbit": pl.lit(2, dtype=pl.UInt64).pow(digits.str.len_bytes().clip(upper_bound=MAX_LENGTH).cast(pl.UInt64)),
        "_tri": key.replace_strict(_region_index(), default=None, return_dtype=pl.UInt32),
    }
    fits = {kind: (pl.lit(_masks(kind)).gather(pl.col("_tri")) & pl.col("_tbit")) != 0 for kind in kinds}
    # Few numbers are of a special type: one regex finds those that may be, and only they are
    # matched against each special type's (a null skips the regex).
    special = pl.col("_t_special")
    checks = {f"_t_{kind}": ((special if kind in _SPECIAL_TYPES else pl.col("_tk")).str.contains(joined(kind).pattern)  # type: ignore[union-attr]
                             & fits[kind]).fill_null(False) for kind in kinds}  # fmt: skip
    col = {kind: pl.col(f"_t_{kind}") for kind in kinds}
    chain = pl.when(~col["general"]).then(pl.lit(None, dtype=pl.String))
    for kind in kinds[1:-2]:
        chain = chain.when(col[kind]).then(pl.lit(kind))
    fixed, mobile = col["fixed_line"], col["mobile"]
    same = key.is_in(_same_keys())
    chain = chain.when(fixed & (same | mobile)).then(pl.lit(FLOM)).when(fixed).then(pl.lit("fixed_line"))
    kind = chain.when(mobile).then(pl.lit("mobile")).otherwise(pl.lit(None, dtype=pl.String))
    any_special = joined("any_special")
    maybe = {"_t_special": pl.when(pl.col("_tk").str.contains(any_special.pattern)).then(pl.col("_tk"))
             if any_special else pl.lit(None, dtype=pl.String)}  # fmt: skip
    return first, maybe, checks, {out: kind}
