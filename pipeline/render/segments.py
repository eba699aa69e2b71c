"""How many billed SMS parts a text takes (docs/providers.md §6.3): GSM-7 160/153, UCS-2 70/67, for one
text (`count_segments`, what the channels and the sandbox count) and for a whole column, vectorised
(`with_segments`: the `segments` and `encoding` columns of accepted.parquet). Both read the same tables.

One character outside GSM 03.38 switches the whole text to UCS-2; GSM extension characters take two
septets and astral characters (most emoji) two UTF-16 units, and neither is split across parts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import polars as pl

# GSM 03.38 basic character set (the escape code 0x1B itself is not a character).
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# The extension table: each is sent as ESC + character, two septets.
GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")

LIMITS = {"gsm7": (160, 153), "ucs2": (70, 67)}  # (single part, per part when concatenated)


@dataclass(frozen=True)
class SmsSegments:
    encoding: Literal["gsm7", "ucs2"]
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2)
    segments: int


def count_segments(text: str) -> SmsSegments:
    """The parts `text` is sent (and billed) as; an empty text is still one part."""
    if all(c in GSM7_BASIC or c in GSM7_EXTENSION for c in text):
        encoding: Literal["gsm7", "ucs2"] = "gsm7"
        weights = [2 if c in GSM7_EXTENSION else 1 for c in text]
    else:
        encoding = "ucs2"
        weights = [2 if ord(c) > 0xFFFF else 1 for c in text]
    units = sum(weights)
    single, per_part = LIMITS[encoding]
    if units <= single:
        return SmsSegments(encoding, units, 1)
    segments, used = 1, 0
    for weight in weights:
        # An escape pair or a surrogate pair never straddles two parts: it starts the next one.
        if used + weight > per_part:
            segments, used = segments + 1, 0
        used += weight
    return SmsSegments(encoding, units, segments)


def _char_class(chars: frozenset[str], *, negate: bool = False) -> str:
    return "[" + ("^" if negate else "") + "".join(f"\\x{{{ord(c):X}}}" for c in sorted(chars)) + "]"


_NOT_BASIC = _char_class(GSM7_BASIC, negate=True)
_NOT_GSM = _char_class(GSM7_BASIC | GSM7_EXTENSION, negate=True)
_EXTENSION = _char_class(GSM7_EXTENSION)
_ASTRAL = "[\\x{10000}-\\x{10FFFF}]"


def _segments(units: pl.Expr, encoding: str, lost: int = 0) -> pl.Expr:
    """Parts for `units`, each part of a long message holding `lost` fewer than the most."""
    single, per = LIMITS[encoding]
    return pl.when(units <= single).then(1).otherwise((units + per - lost - 1) // (per - lost))


def with_segments(frame: pl.DataFrame, text: str = "text") -> pl.DataFrame:
    """`frame` plus `segments` (Int64) and `encoding` ("gsm7" / "ucs2") for its `text` column
    (null text, null segments). Most texts hold only the basic GSM alphabet and are measured by
    their length; the others by their alphabet and two-unit characters. Since a pair never
    straddles a part, a part holds 152 (66) units or more: only a text whose count differs
    between 152 and 153 (66 and 67) per part is packed character by character."""
    column = pl.col(text)
    frame = frame.with_columns(_plain=~column.str.contains(_NOT_BASIC), _units=column.str.len_chars())
    frame = frame.with_columns(
        segments=_segments(pl.col("_units"), "gsm7").cast(pl.Int64),
        encoding=pl.when(column.is_not_null()).then(pl.lit("gsm7")),
    )
    special = (~frame["_plain"]).fill_null(False)
    if special.any():
        rows = frame.filter(special).select(text, "_units").with_columns(_ucs2=column.str.contains(_NOT_GSM))
        doubles = (
            pl.when("_ucs2").then(column.str.count_matches(_ASTRAL)).otherwise(column.str.count_matches(_EXTENSION))
        )
        rows = rows.with_columns(
            _units=pl.col("_units") + doubles, encoding=pl.when("_ucs2").then(pl.lit("ucs2")).otherwise(pl.lit("gsm7"))
        )
        units, ucs2 = pl.col("_units"), pl.col("_ucs2")
        low = pl.when(ucs2).then(_segments(units, "ucs2")).otherwise(_segments(units, "gsm7"))
        high = pl.when(ucs2).then(_segments(units, "ucs2", 1)).otherwise(_segments(units, "gsm7", 1))
        rows = rows.with_columns(segments=low.cast(pl.Int64), _exact=low != high)
        if rows["_exact"].any():
            exact = {t: count_segments(t).segments for t in rows.filter("_exact")[text].unique().to_list()}
            looked_up = column.replace_strict(exact, default=None, return_dtype=pl.Int64)
            rows = rows.with_columns(segments=pl.when("_exact").then(looked_up).otherwise("segments"))
        where = special.arg_true()
        frame = frame.with_columns(frame[c].scatter(where, rows[c]) for c in ("segments", "encoding"))
    return frame.drop("_plain", "_units")
