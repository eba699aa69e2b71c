"""WhatsApp's rule for template text parameters (docs/providers.md §1.2, Meta's template rules): no newline or
tab, and no more than four consecutive spaces; Meta refuses a message breaking it (error 132018). The one
definition of the rule: model-written values are checked with it (generated_checks.py), and so is every
rendered header and body parameter of a WhatsApp or Chat App template (Chat App sends WhatsApp templates)."""

from __future__ import annotations

import json
import re

import polars as pl

from pipeline.spec import TemplateSpec

PARAMETER_CHANNELS = frozenset({"whatsapp", "chatapp"})
PARAMETER_BREAK = re.compile(r"\n|\t| {5}")
_WHAT = {"\n": "a newline", "\t": "a tab"}
_SPACES = "more than four consecutive spaces"
_IN_JSON = r"\\[nt]| {5}"  # where PARAMETER_BREAK may match, in params_json (JSON escapes newline and tab)


def parameter_break(value: str) -> str | None:
    """What in `value` a WhatsApp template parameter may not hold ("a newline", ...), or None."""
    found = PARAMETER_BREAK.search(value)
    return None if found is None else _WHAT.get(found.group(), _SPACES)


def _parameters(template: TemplateSpec) -> list[tuple[str, str, int]]:
    """(where, params key, index) of each text parameter: text header, body, and card bodies."""
    found = [] if template.header_media is not None else [
        (f"header parameter {{{{{i}}}}}", "header", i - 1) for i in range(1, len(template.header_sources) + 1)]
    found += [(f"body parameter {{{{{i}}}}}", "body", i - 1) for i in range(1, len(template.body) + 1)]
    found += [(where, "cards", k) for k, (where, _, _) in enumerate(template.card_parts) if " body parameter " in where]
    return found


def reject_broken_parameters(
    out: pl.DataFrame, template: TemplateSpec, columns: dict[str, list[str]] | None = None,
) -> pl.DataFrame:
    """`out` (params_json, _reason, _detail) with the rows still sendable whose text parameter breaks the rule
    rejected bad_row, naming the first such parameter, the columns it reads (`columns`: where -> columns) and
    what it holds. For the channels of PARAMETER_CHANNELS only."""
    wanted = _parameters(template)
    if not wanted or out.height == 0:
        return out
    # A cheap pass over the JSON text first (a newline or tab is escaped there): decoding every row's
    # params took ten times as long as rendering them; the rule itself judges the few rows it finds.
    suspect = (out["_reason"].is_null() & out["params_json"].str.contains(_IN_JSON)).fill_null(False)
    if not suspect.any():
        return out
    rows = suspect.arg_true()
    details = [_broken(json.loads(params), wanted, columns or {}) for params in out["params_json"].gather(rows)]
    reasons = pl.Series([None if d is None else "bad_row" for d in details], dtype=pl.String)
    return out.with_columns(
        out["_reason"].scatter(rows, reasons),
        out["_detail"].scatter(rows, pl.Series(details, dtype=pl.String).fill_null(out["_detail"].gather(rows))),
    )


def _broken(
    params: dict[str, list[str]], wanted: list[tuple[str, str, int]], columns: dict[str, list[str]],
) -> str | None:
    """The reject detail of the first parameter of `wanted` breaking the rule, or None."""
    for where, key, index in wanted:
        values = params.get(key) or []
        what = parameter_break(values[index]) if index < len(values) else None
        if what is not None:
            read = columns.get(where)
            named = f"{where} (column {', '.join(read)})" if read else where
            return f"{named} holds {what}, which Meta refuses in a template parameter (132018)"
    return None
