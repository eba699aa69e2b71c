"""phonenumbers' parse + region_code_for_number + number_type, vectorised in Polars over the
library's own metadata (pipeline/audience/phonemeta.py). The parse runs over the rows of every
region at once, with the metadata's parsing regexes joined over the regions (phonejoin.py); the
choice among the regions of a shared calling code (+1, +44, ...) runs per code, and number_type
per region, each partition with its own regexes. Each function mirrors the
phonenumbers/phonenumberutil.py function named in its docstring."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache

import polars as pl

from pipeline.audience.phonejoin import in_mask, matches, strip_prefix, transformed
from pipeline.audience.phonemeta import (
    INVALID_LENGTH,
    LOCAL_ONLY,
    MAX_LENGTH,
    MAX_NSN_LENGTH,
    MIN_NSN_LENGTH,
    TOO_LONG,
    TOO_SHORT,
    Desc,
    RegionMeta,
    metadata,
)

# Parse error codes (phonenumbers' NumberParseException types), worded in numbers_fast.
ICC, NAN, SHORT, LONG = "invalid_country_code", "not_a_number", "too_short", "too_long"
FALLBACK = "fallback"  # not modelled here: ask phonenumbers

Stage = Callable[[pl.DataFrame, RegionMeta], pl.LazyFrame]  # one partition -> its plan
_LITERAL = re.compile(r"\(\?-u\)\^\(\?:(\d+)\)")


def _by(frame: pl.DataFrame, key: str, stage: Stage) -> pl.DataFrame:
    """`stage` over each partition of `frame` by `key` (a RegionMeta key column), in one
    collect so that Polars runs the partitions in parallel. (Each partition's plan costs its
    expressions' overhead once more: ~0.1 s of CPU per batch for number_type's ~240 regions.)"""
    meta = metadata()
    if frame.height == 0:
        return stage(frame, next(iter(meta.regions.values()))).collect().clear()
    parts = frame.partition_by(key, as_dict=True).items()
    plans = [stage(part, meta.regions[value]) for (value,), part in parts]
    return pl.concat(plans, how="vertical_relaxed", parallel=True).collect(engine="in-memory").rechunk()


def _lengths_where(verdicts: tuple[int, ...], wanted: set[int]) -> list[int]:
    return [n for n, verdict in enumerate(verdicts) if verdict in wanted]


def _mask(lengths: list[int]) -> int:
    return sum(1 << n for n in lengths)


def length(column: pl.Expr) -> pl.Expr:
    """The length, clipped to the verdict tables' size (longer is too long everywhere)."""
    return column.str.len_bytes().clip(upper_bound=MAX_LENGTH)


@cache
def _per_region() -> dict[str, dict[str, object]]:
    """Constants of each region (by key) that the parse looks up per row."""
    meta = metadata()
    kept = {TOO_SHORT, LOCAL_ONLY, INVALID_LENGTH}
    return {
        "own": {k: str(m.country_code) for k, m in meta.regions.items()},
        "own_key": {k: meta.main_key[m.country_code] for k, m in meta.regions.items()},
        "too_long": {k: _mask(_lengths_where(m.length_any, {TOO_LONG})) for k, m in meta.regions.items()},
        "kept": {k: _mask(_lengths_where(m.length_any, kept)) for k, m in meta.regions.items()},
    }


def _lookup(name: str, key: pl.Expr) -> pl.Expr:
    """Each row's value of the region constant `name` (own, own_key: text; the masks: UInt64)."""
    dtype = pl.String if name in ("own", "own_key") else pl.UInt64
    return key.replace_strict(_per_region()[name], default=None, return_dtype=dtype)


def _general(column: pl.Expr, key: pl.Expr) -> pl.Expr:
    """_match_national_number(number, general_desc): the regex alone, no length check."""
    return matches("general", key, column)


def _strip_national_prefix(column: pl.Expr, key: pl.Expr, out: str) -> Steps:
    """_maybe_strip_national_prefix_carrier_code into column `out`: the number with its national
    prefix removed (or transformed), unless that turns a number matching the general pattern
    into one that does not. In steps: each intermediate is read several times (drop
    STRIP_TEMPORARY afterwards)."""
    rest, result = pl.col("_np_rest"), pl.col("_np_result")
    keep = _general(column, key) & ~_general(result, key)
    return (
        {"_np_rest": strip_prefix("national_prefix", key, column)},
        {"_np_result": pl.coalesce(transformed(key, column, rest), rest)},
        {out: pl.when(rest.is_null() | keep.fill_null(False)).then(column).otherwise(result)},
    )


STRIP_TEMPORARY = ["_np_rest", "_np_result"]


@cache
def calling_code(name: str) -> pl.Expr:
    """_extract_country_code: the shortest leading 1-3 digits that are a known calling code (one
    lookup of the first three digits: cheaper than testing each length)."""
    head = pl.col(name).str.slice(0, 3)
    return head.replace_strict(_code_of_head(), default=None, return_dtype=pl.String)


@cache
def _code_of_head() -> dict[str, str]:
    """Every string of 1-3 digits -> the shortest known calling code it starts with."""
    codes = {str(code) for code in metadata().by_code}
    heads = (f"{n:0{size}d}" for size in (1, 2, 3) for n in range(10**size))
    found = {head: next((head[:k] for k in (1, 2, 3) if head[:k] in codes), None) for head in heads}
    return {head: code for head, code in found.items() if code is not None}


@cache
def main_key(name: str) -> pl.Expr:
    """The key of the metadata parse() reads a calling code with (its main region's)."""
    keys = {str(code): key for code, key in metadata().main_key.items()}
    return pl.col(name).replace_strict(keys, default=None, return_dtype=pl.String)


Steps = tuple[dict[str, pl.Expr], ...]  # with_columns calls, in order


def _apply(frame: pl.LazyFrame, steps: Steps) -> pl.LazyFrame:
    for columns in steps:
        frame = frame.with_columns(**columns)
    return frame


def _run(frame: pl.DataFrame, steps: Steps, temporary: list[str]) -> pl.DataFrame:
    """`steps` over `frame`, then without the `temporary` columns. (Dropping them before collecting
    lets the optimiser fold the steps together, and each intermediate is computed again where it
    is read: ~25 % slower.)"""
    return _apply(frame.lazy(), steps).collect().drop(temporary, strict=False)


@cache
def _national_steps() -> Steps:
    """_maybe_extract_country_code for digits written without a +, read in the region of _meta:
    an international prefix then a calling code, or the region's own code written without +,
    or a national number."""
    digits, key = pl.col("_D"), pl.col("_meta")
    # _maybe_strip_i18n_prefix_and_normalize / _parse_prefix_as_idd
    after = strip_prefix("international_prefix", key, digits)
    first = {"_after": after, "_own": _lookup("own", key)}
    # Regexes skip null values: the own-code checks only look at digits starting with the code.
    starts = pl.col("_starts")
    own = pl.col("_own")
    second = {"_idd": (pl.col("_after").str.slice(0, 1) != "0").fill_null(False), "_idd_cc": calling_code("_after"),
              "_starts": pl.when(digits.str.starts_with(own)).then(digits)}  # fmt: skip
    third = {"_cut": starts.str.slice(own.str.len_bytes())}  # the digits after the own code
    stripped = _strip_national_prefix(pl.col("_cut"), key, "_without")
    too_long = in_mask(length(digits), _lookup("too_long", key))
    own_code = starts.is_not_null() & ((~_general(starts, key) & _general(pl.col("_without"), key)) | too_long)
    fourth = {"_own_code": own_code.fill_null(False)}
    idd, after, code, own_code = pl.col("_idd"), pl.col("_after"), pl.col("_idd_cc"), pl.col("_own_code")
    last = {
        "_err": pl.when(idd & (after.str.len_bytes() <= MIN_NSN_LENGTH)).then(pl.lit(SHORT))
        .when(idd & code.is_null()).then(pl.lit(ICC)),
        "_cc": pl.when(idd).then(code).otherwise(pl.col("_own")),
        "_nat": pl.when(idd).then(after.str.slice(code.str.len_bytes()))
        .when(own_code).then(pl.col("_without")).otherwise(digits),
        "_meta": pl.when(idd).then(main_key("_idd_cc"))
        .when(own_code).then(_lookup("own_key", key)).otherwise(key),
    }  # fmt: skip
    return first, second, third, *stripped, fourth, last


def _parse_national(frame: pl.DataFrame) -> pl.DataFrame:
    """The national parse, every region at once."""
    temporary = ["_after", "_idd", "_idd_cc", "_starts", "_cut", "_without", "_own", "_own_code", *STRIP_TEMPORARY]
    return _run(frame, _national_steps(), temporary)


@cache
def _finish_steps() -> Steps:
    """The end of parse(): strip the national prefix when what remains has a possible length,
    then the NSN length limits."""
    nat, key = pl.col("_nat"), pl.col("_meta")
    steps: list[dict[str, pl.Expr]] = [{"_short": nat.str.len_bytes() < MIN_NSN_LENGTH}]
    steps.extend(_strip_national_prefix(nat, key, "_pot"))
    kept = in_mask(length(pl.col("_pot")), _lookup("kept", key))
    steps.append({"_nat": pl.when(kept).then(nat).otherwise("_pot")})
    size = pl.col("_nat").str.len_bytes()
    error = pl.when(pl.col("_short") | (size < MIN_NSN_LENGTH)).then(pl.lit(SHORT))
    steps.append({"_err": error.when(size > MAX_NSN_LENGTH).then(pl.lit(LONG))})
    return tuple(steps)


def _finish_national_number(frame: pl.DataFrame) -> pl.DataFrame:
    return _run(frame, _finish_steps(), ["_short", "_pot", *STRIP_TEMPORARY])


def _matches(column: pl.Expr, desc: Desc | None) -> pl.Expr:
    """_is_number_matching_desc: a possible length and a whole-pattern match."""
    if desc is None:
        return pl.lit(False)
    match = column.str.contains(desc.pattern)
    return column.str.len_bytes().is_in(list(desc.lengths)) & match if desc.lengths else match


def _number_type(m: RegionMeta, prefix: str) -> tuple[dict[str, pl.Expr], pl.Expr]:
    """_number_type_helper on _nat in region `m`, with its own regexes: (boolean columns to add
    first, the type name over them; null for UNKNOWN). Per region, not joined like the parse's
    patterns: joined, the eleven kinds' large regexes cost more per row than the plans they save."""
    nsn = pl.col("_nat")
    checks: dict[str, pl.Expr] = {f"{prefix}general": _matches(nsn, m.general_desc)}
    for name, desc in m.special:
        checks[f"{prefix}{name}"] = _matches(nsn, desc)
    checks[f"{prefix}fixed"] = _matches(nsn, m.fixed_line)
    checks[f"{prefix}mobile"] = pl.lit(False) if m.same_mobile_and_fixed_line else _matches(nsn, m.mobile)
    col = pl.col
    chain = pl.when(~col(f"{prefix}general")).then(pl.lit(None, dtype=pl.String))
    for name, _ in m.special:
        chain = chain.when(col(f"{prefix}{name}")).then(pl.lit(name))
    fixed, mobile = col(f"{prefix}fixed"), col(f"{prefix}mobile")
    if m.same_mobile_and_fixed_line:
        chain = chain.when(fixed).then(pl.lit("fixed_line_or_mobile"))
    else:
        chain = chain.when(fixed & mobile).then(pl.lit("fixed_line_or_mobile")).when(fixed).then(pl.lit("fixed_line"))
        chain = chain.when(mobile).then(pl.lit("mobile"))
    return checks, chain.otherwise(pl.lit(None, dtype=pl.String))


@cache
def _type_exprs(key: str) -> tuple[dict[str, pl.Expr], pl.Expr]:
    return _number_type(metadata().regions[key], "_t_")


def _type_in_region(frame: pl.DataFrame, m: RegionMeta) -> pl.LazyFrame:
    """number_type in region `m` (the number is valid when it is not UNKNOWN)."""
    checks, kind = _type_exprs(m.key)
    return frame.lazy().with_columns(**checks).with_columns(_type=kind).drop(list(checks))


@cache
def _choose_steps(key: str) -> tuple[Steps, list[str]]:
    """_region_code_for_number_from_list for a calling code shared by several regions (`key` is
    its main one): the first region whose leading digits match or, having none, that
    recognises the number. Those full checks leave their number type in _type."""
    meta = metadata()
    keys = meta.by_code[meta.regions[key].country_code]
    checks: dict[str, pl.Expr] = {}
    types: dict[str, pl.Expr] = {}
    for each in keys:
        region = meta.regions[each]
        if region.leading_digits:
            checks[f"_ld_{each}"] = pl.col("_nat").str.contains(region.leading_digits)
        else:
            booleans, kind = _number_type(region, f"_{each}_")
            checks.update(booleans)
            types[f"_type_{each}"] = kind
    chosen = pl.when(pl.lit(False)).then(pl.lit(None, dtype=pl.String))
    kind = pl.lit(None, dtype=pl.String)
    for each in keys:
        if f"_type_{each}" in types:
            chosen = chosen.when(pl.col(f"_type_{each}").is_not_null()).then(pl.lit(each))
            kind = pl.when(pl.col("_meta") == each).then(pl.col(f"_type_{each}")).otherwise(kind)
        else:
            chosen = chosen.when(pl.col(f"_ld_{each}")).then(pl.lit(each))
    steps = (checks, types, {"_meta": chosen.otherwise(pl.lit(None, dtype=pl.String))}, {"_type": kind})
    return steps, [*checks, *types]


def _choose_region(frame: pl.DataFrame, m: RegionMeta) -> pl.LazyFrame:
    steps, temporary = _choose_steps(m.key)
    return _apply(frame.lazy(), steps).drop(temporary)


@cache
def _may_have_national_prefix() -> pl.Expr:
    """True where _nat may start with the national prefix of _meta's region."""
    regions = metadata().regions.values()
    literal = {
        m.key: lit.group(1) for m in regions if m.national_prefix and (lit := _LITERAL.fullmatch(m.national_prefix))
    }
    patterned = [m.key for m in regions if m.national_prefix and m.key not in literal]
    starts = pl.col("_nat").str.starts_with(
        pl.col("_meta").replace_strict(literal, default=None, return_dtype=pl.String)
    )
    return (pl.col("_meta").is_in(patterned) | starts).fill_null(False)


def parse_fast(rows: pl.DataFrame) -> pl.DataFrame:
    """rows: _i, _D (ASCII digits, at least 3), _plus (bool), _R (a supported region or null).

    Returns one row per input, sorted by _i: _cc (calling code), _nat (national significant
    number), _region and _type (null when not a valid number) and _err (a parse error code,
    FALLBACK for rows to hand to phonenumbers, else null)."""
    meta = metadata()
    plus = rows.filter(pl.col("_plus")).with_columns(_cc=calling_code("_D"))
    # parse() retries "+<unknown code>…" as a national number of the row's region: not modelled.
    unknown = plus.filter(pl.col("_cc").is_null())
    errors = [
        unknown.with_columns(_err=pl.when(pl.col("_R").is_null()).then(pl.lit(ICC)).otherwise(pl.lit(FALLBACK))),
        # _check_region_for_parsing: no + and no region to read the number in
        rows.filter(~pl.col("_plus") & pl.col("_R").is_null()).with_columns(_err=pl.lit(ICC)),
    ]
    plus = plus.filter(pl.col("_cc").is_not_null()).with_columns(
        _nat=pl.col("_D").str.slice(pl.col("_cc").str.len_bytes()), _meta=main_key("_cc"), _err=pl.lit(None, pl.String)
    )
    national = rows.filter(~pl.col("_plus") & pl.col("_R").is_not_null()).with_columns(_meta=pl.col("_R"))
    parsed = pl.concat([plus, _parse_national(national)], how="diagonal_relaxed")
    parsed = parsed.select("_i", "_cc", "_nat", "_meta", "_err")  # the digits as written are done with
    errors.append(parsed.filter(pl.col("_err").is_not_null()))
    # The end of parse() only changes numbers starting with their region's national prefix (a
    # plain digit string for most regions): the others just have their length checked.
    parsed = parsed.filter(pl.col("_err").is_null())
    prefixed = _may_have_national_prefix()
    size = pl.col("_nat").str.len_bytes()
    parsed = pl.concat([
        _finish_national_number(parsed.filter(prefixed)),
        parsed.filter(~prefixed).with_columns(
            _err=pl.when(size < MIN_NSN_LENGTH).then(pl.lit(SHORT)).when(size > MAX_NSN_LENGTH).then(pl.lit(LONG))
        ),
    ])  # fmt: skip
    errors.append(parsed.filter(pl.col("_err").is_not_null()))

    # region_code_for_number, then number_type in that region
    parsed = parsed.filter(pl.col("_err").is_null()).with_columns(_meta=main_key("_cc"), _type=pl.lit(None, pl.String))
    shared = pl.col("_meta").is_in([meta.main_key[c] for c, keys in meta.by_code.items() if len(keys) > 1])
    parsed = pl.concat([parsed.filter(~shared), _by(parsed.filter(shared), "_meta", _choose_region)])
    known = pl.col("_type").is_not_null() | pl.col("_meta").is_null()
    classified = pl.concat([parsed.filter(known), _by(parsed.filter(~known), "_meta", _type_in_region)])
    region = {key: r.region for key, r in meta.regions.items()}
    classified = classified.with_columns(_region=pl.col("_meta").replace_strict(region, default=None))
    columns = {"_i": pl.UInt32, "_cc": pl.String, "_nat": pl.String, "_region": pl.String, "_type": pl.String,
               "_err": pl.String}  # fmt: skip
    out = [f.select([pl.col(c).cast(t) if c in f.columns else pl.lit(None, t).alias(c) for c, t in columns.items()])
           for f in [*errors, classified]]  # fmt: skip
    return pl.concat(out).sort("_i")
