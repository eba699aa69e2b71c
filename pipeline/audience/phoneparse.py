"""phonenumbers' parse + region_code_for_number + number_type, vectorised in Polars over the
library's own metadata (pipeline/audience/phonemeta.py). Rows are partitioned by the region whose
patterns apply, so each partition evaluates only its own regexes; each function mirrors the
phonenumbers/phonenumberutil.py function named in its docstring."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache

import polars as pl

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
    collect so that Polars runs the partitions in parallel."""
    meta = metadata()
    if frame.height == 0:
        return stage(frame, next(iter(meta.regions.values()))).collect().clear()
    parts = frame.partition_by(key, as_dict=True).items()
    plans = [stage(part, meta.regions[value]) for (value,), part in parts]
    return pl.concat(plans, how="vertical_relaxed", parallel=True).collect(engine="in-memory").rechunk()


def _lengths_where(verdicts: tuple[int, ...], wanted: set[int]) -> list[int]:
    return [n for n, verdict in enumerate(verdicts) if verdict in wanted]


def length(column: pl.Expr) -> pl.Expr:
    """The length, clipped to the verdict tables' size (longer is too long everywhere)."""
    return column.str.len_bytes().clip(upper_bound=MAX_LENGTH)


def _prefix(column: pl.Expr, pattern: str) -> pl.Expr:
    """What an anchored prefix pattern matches at the start (Python's re.match), null if none;
    plain digit prefixes (most international and national prefixes) need no regex."""
    literal = _LITERAL.fullmatch(pattern)
    if literal:
        return pl.when(column.str.starts_with(literal.group(1))).then(pl.lit(literal.group(1)))
    return column.str.extract(pattern, 0)


def _general(column: pl.Expr, m: RegionMeta) -> pl.Expr:
    """_match_national_number(number, general_desc): the regex alone, no length check."""
    return column.str.contains(m.general) if m.general else pl.lit(False)


def _matches(column: pl.Expr, desc: Desc | None) -> pl.Expr:
    """_is_number_matching_desc: a possible length and a whole-pattern match."""
    if desc is None:
        return pl.lit(False)
    match = column.str.contains(desc.pattern)
    return column.str.len_bytes().is_in(list(desc.lengths)) & match if desc.lengths else match


def _strip_national_prefix(column: pl.Expr, m: RegionMeta) -> pl.Expr:
    """_maybe_strip_national_prefix_carrier_code: the number with its national prefix removed
    (or transformed), unless that turns a number matching the general pattern into one that
    does not."""
    if not m.national_prefix:
        return column
    prefix = _prefix(column, m.national_prefix)
    rest = column.str.slice(prefix.str.len_bytes())
    if m.transform:
        last_group = column.str.extract(m.national_prefix, m.national_prefix_groups)
        rewritten = column.str.replace(m.national_prefix, m.transform, n=1)
        rest = pl.when(last_group.is_null()).then(rest).otherwise(rewritten)
    keep = _general(column, m) & ~_general(rest, m)
    return pl.when(prefix.is_null() | keep.fill_null(False)).then(column).otherwise(rest)


@cache
def _code_of_head() -> dict[str, str]:
    """Every string of 1-3 digits -> the shortest known calling code it starts with."""
    codes = {str(code) for code in metadata().by_code}
    heads = (f"{n:0{size}d}" for size in (1, 2, 3) for n in range(10**size))
    found = {head: next((head[:k] for k in (1, 2, 3) if head[:k] in codes), None) for head in heads}
    return {head: code for head, code in found.items() if code is not None}


@cache
def calling_code(name: str) -> pl.Expr:
    """_extract_country_code: the shortest leading 1-3 digits that are a known calling code (one
    lookup of the first three digits: cheaper than testing each length)."""
    head = pl.col(name).str.slice(0, 3)
    return head.replace_strict(_code_of_head(), default=None, return_dtype=pl.String)


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


@cache
def _national_steps(key: str, own_code_rows: bool = True) -> Steps:
    """_maybe_extract_country_code for digits written without a +, read in region `key`: an
    international prefix then a calling code, or the region's own code written without +, or
    a national number. (Expressions are built once per region and process.) Without
    `own_code_rows` (no row starts with the region's calling code) the own-code branch, whose
    general-pattern regexes are the costliest part to compile, is left out: it could not apply."""
    meta = metadata()
    m = meta.regions[key]
    digits = pl.col("_D")
    own = str(m.country_code)
    if m.international_prefix:  # _maybe_strip_i18n_prefix_and_normalize / _parse_prefix_as_idd
        idd = _prefix(digits, m.international_prefix)
        after = digits.str.slice(idd.str.len_bytes())
        first = {"_after": after, "_idd": (idd.is_not_null() & (after.str.slice(0, 1) != "0")).fill_null(False)}
    else:
        first = {"_after": pl.lit(None, dtype=pl.String), "_idd": pl.lit(False)}
    # Regexes skip null values: the own-code checks only look at digits starting with the code.
    starts = pl.when(digits.str.starts_with(own)).then(digits)
    second = {"_idd_cc": calling_code("_after")}
    own_code: pl.Expr = pl.lit(False)
    if own_code_rows:
        second["_without"] = _strip_national_prefix(starts.str.slice(len(own)), m)
        too_long = length(digits).is_in(_lengths_where(m.length_any, {TOO_LONG}))
        own_code = starts.is_not_null() & ((~_general(starts, m) & _general(pl.col("_without"), m)) | too_long)
    idd, after, code = pl.col("_idd"), pl.col("_after"), pl.col("_idd_cc")
    last = {
        "_err": pl.when(idd & (after.str.len_bytes() <= MIN_NSN_LENGTH)).then(pl.lit(SHORT))
        .when(idd & code.is_null()).then(pl.lit(ICC)),
        "_cc": pl.when(idd).then(code).otherwise(pl.lit(own)),
        "_nat": pl.when(idd).then(after.str.slice(code.str.len_bytes()))
        .when(own_code).then(pl.col("_without") if own_code_rows else digits).otherwise(digits),
        "_meta": pl.when(idd).then(main_key("_idd_cc"))
        .when(own_code).then(pl.lit(meta.main_key[m.country_code])).otherwise(pl.lit(m.key)),
    }  # fmt: skip
    return first, second, last


def _parse_national(own_code_keys: set[str]) -> Stage:
    """The national parse of one region's partition; `own_code_keys`: the regions where some row
    starts with the region's calling code (found for all regions at once: per partition, even
    that small check costs more than the parse)."""

    def stage(frame: pl.DataFrame, m: RegionMeta) -> pl.LazyFrame:
        steps = _national_steps(m.key, m.key in own_code_keys)
        return _apply(frame.lazy(), steps).drop("_after", "_idd", "_idd_cc", "_without", strict=False)

    return stage


def _own_code_keys(national: pl.DataFrame) -> set[str]:
    codes = {key: str(m.country_code) for key, m in metadata().regions.items()}
    own = pl.col("_D").str.starts_with(pl.col("_meta").replace_strict(codes, default=None, return_dtype=pl.String))
    return set(national.filter(own.fill_null(False)).get_column("_meta").unique().to_list())


@cache
def _finish_steps(key: str) -> Steps:
    """The end of parse(): strip the national prefix when what remains has a possible length,
    then the NSN length limits."""
    m = metadata().regions[key]
    nat = pl.col("_nat")
    steps: list[dict[str, pl.Expr]] = [{"_short": nat.str.len_bytes() < MIN_NSN_LENGTH}]
    if m.national_prefix:
        kept = _lengths_where(m.length_any, {TOO_SHORT, LOCAL_ONLY, INVALID_LENGTH})
        steps.append({"_pot": _strip_national_prefix(nat, m)})
        steps.append({"_nat": pl.when(length(pl.col("_pot")).is_in(kept)).then(nat).otherwise("_pot")})
    size = pl.col("_nat").str.len_bytes()
    error = pl.when(pl.col("_short") | (size < MIN_NSN_LENGTH)).then(pl.lit(SHORT))
    steps.append({"_err": error.when(size > MAX_NSN_LENGTH).then(pl.lit(LONG))})
    return tuple(steps)


def _finish_national_number(frame: pl.DataFrame, m: RegionMeta) -> pl.LazyFrame:
    return _apply(frame.lazy(), _finish_steps(m.key)).drop("_short", "_pot", strict=False)


def _number_type(m: RegionMeta, prefix: str) -> tuple[dict[str, pl.Expr], pl.Expr]:
    """_number_type_helper on _nat: (boolean columns to add first, the type name over them;
    null for UNKNOWN)."""
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
    parsed = pl.concat([plus, _by(national, "_meta", _parse_national(_own_code_keys(national)))],
                       how="diagonal_relaxed")
    parsed = parsed.select("_i", "_cc", "_nat", "_meta", "_err")  # the digits as written are done with
    errors.append(parsed.filter(pl.col("_err").is_not_null()))
    # The end of parse() only changes numbers starting with their region's national prefix (a
    # plain digit string for most regions): the others just have their length checked.
    parsed = parsed.filter(pl.col("_err").is_null())
    prefixed = _may_have_national_prefix()
    size = pl.col("_nat").str.len_bytes()
    parsed = pl.concat([
        _by(parsed.filter(prefixed), "_meta", _finish_national_number),
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
