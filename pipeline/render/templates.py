"""Rendering templates per recipient: sandboxed, strict, bounded Jinja2 compiled once per campaign; a
row with a missing value, or whose message would be longer than its channel takes, is rejected on its
own, and template/column mistakes are caught up front."""

from __future__ import annotations

import gc
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

import polars as pl
from jinja2 import StrictUndefined, Template, TemplateSyntaxError, UndefinedError, meta
from jinja2.exceptions import SecurityError

from pipeline.records import REJECTS_SCHEMA, empty_rejects
from pipeline.render.bounded import RenderLimit, bounded
from pipeline.render.components import build_whatsapp_components, media_header  # noqa: F401  (re-exported)
from pipeline.render.environment import BoundedEnvironment
from pipeline.render.fast import FastTemplate, NotCompilable
from pipeline.render.limits import RenderLimits
from pipeline.render.parameters import PARAMETER_CHANNELS, reject_broken_parameters
from pipeline.spec import RENDERED_BUTTONS, TemplateSpec

_ENV = BoundedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
_UNDEFINED_NAME = re.compile(r"'([^']+)' is undefined")


class TemplateProblem(ValueError):
    """A template that cannot be rendered for this audience; the message lists every problem."""


def _sources(template: TemplateSpec) -> list[tuple[str, str]]:
    """(where, Jinja2 source) for every rendered part; quick_reply payloads are fixed text."""
    parts = [("text", template.text)]
    parts += [(f"header parameter {{{{{i}}}}}", src) for i, src in enumerate(template.header_sources, 1)]
    parts += [(f"body parameter {{{{{i}}}}}", src) for i, src in enumerate(template.body, 1)]
    parts += [(f"button {i} {b.sub_type}", b.text) for i, b in enumerate(template.buttons)
              if b.sub_type in RENDERED_BUTTONS and b.text]
    parts += [(where, src) for where, src, rendered in template.card_parts if rendered]
    return parts


def check_template(template: TemplateSpec, variables: dict[str, str], columns: Iterable[str]) -> list[str]:
    """Every problem that would make the whole campaign fail: syntax errors, variables the
    template uses but `variables` does not map, mapped columns the audience lacks."""
    problems: list[str] = []
    columns = list(columns)
    for where, source in _sources(template):
        try:
            used = meta.find_undeclared_variables(_ENV.parse(source))
        except TemplateSyntaxError as exc:
            problems.append(f"template {where}: syntax error: {exc.message} (line {exc.lineno})")
            continue
        for name in sorted(used - set(variables)):
            problems.append(f"template {where} uses {name!r}, which `variables` does not map to a column")
    for name, column in variables.items():
        if column not in columns:
            problems.append(f"variable {name!r} reads column {column!r}, which the audience lacks (columns: {columns})")
    return problems


@dataclass(frozen=True)
class CompiledTemplate:
    """The Jinja2 templates of one TemplateSpec, compiled once and reused for every row."""

    text: Template
    header: tuple[Template, ...]
    body: tuple[Template, ...]
    buttons: tuple[tuple[str, Template | str], ...]  # (sub_type, rendered value template | fixed payload)
    cards: tuple[tuple[str, Template | str], ...] = ()  # (where, rendered template | fixed payload), flattened

    @classmethod
    def compile(cls, template: TemplateSpec) -> CompiledTemplate:
        buttons: list[tuple[str, Template | str]] = []
        for button in template.buttons:
            if button.sub_type in RENDERED_BUTTONS:
                buttons.append((button.sub_type, _ENV.compile_bounded(button.text or "")))
            else:
                buttons.append((button.sub_type, button.payload or ""))
        return cls(
            text=_ENV.compile_bounded(template.text),
            header=tuple(_ENV.compile_bounded(s) for s in template.header_sources),
            body=tuple(_ENV.compile_bounded(s) for s in template.body),
            buttons=tuple(buttons),
            cards=tuple((where, _ENV.compile_bounded(v) if rendered else v)
                        for where, v, rendered in template.card_parts),
        )

    def render(self, context: dict[str, str], limits: RenderLimits) -> tuple[str, dict[str, list[str]]]:
        """(preview text, params); raises UndefinedError for a value the row lacks, RenderLimit for a
        message over `limits` (the text or a parameter too long, or the template over its budget)."""
        with bounded(limits):
            params = {
                "header": [t.render(context) for t in self.header],
                "body": [t.render(context) for t in self.body],
                "buttons": [v if isinstance(v, str) else v.render(context) for _, v in self.buttons],
            }
            if self.cards:
                params["cards"] = [v if isinstance(v, str) else v.render(context) for _, v in self.cards]
            text = self.text.render(context)
        parts = [("text", text)] + [(f"{part} parameter {{{{{i}}}}}", value) for part in ("header", "body")
                                    for i, value in enumerate(params[part], 1)]  # fmt: skip
        urls = [(i, kind) for i, (kind, _) in enumerate(self.buttons) if kind in RENDERED_BUTTONS]
        parts += [(f"button {i} {kind}", params["buttons"][i]) for i, kind in urls]
        parts += [(where, value) for (where, v), value in zip(self.cards, params.get("cards", []), strict=True)
                  if not isinstance(v, str)]
        for where, value in parts:
            if len(value) > limits.max_message_chars:
                raise RenderLimit(limits.too_long(where, len(value)))
        return text, params


def _columns_read(template: TemplateSpec, variables: dict[str, str]) -> dict[str, list[str]]:
    """where -> the audience columns its source reads (check_template has parsed every source already)."""
    return {where: sorted({variables[n] for n in meta.find_undeclared_variables(_ENV.parse(source)) if n in variables})
            for where, source in _sources(template)}


def _empty_parameter(params: dict[str, list[str]]) -> str | None:
    # Meta refuses a template parameter with empty text; name the first one.
    for part in ("header", "body"):
        for i, value in enumerate(params[part], 1):
            if not value.strip():
                return f"{part} parameter {{{{{i}}}}} renders empty"
    return None


def render_messages(
    frame: pl.DataFrame, template: TemplateSpec, variables: dict[str, str], limits: RenderLimits | None = None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(rendered, rejects): rendered rows gain `text` and `params_json`; a row whose template
    needs a value it lacks (empty or null cell) is rejected missing_variable, naming it; one whose
    text or a parameter would be longer than `limits` allow, whose template goes over its
    budget, or (Alibaba SMS) whose text with its signature is over 500 characters, message_too_long; one
    whose WhatsApp template parameter holds a newline, a tab or five spaces in a row, bad_row.

    Templates render_fast can compile are rendered as Polars expressions; the rest, the odd row
    the compiled form is unsure about and rows whose values could make a part too long, by Jinja2
    per row — with the same bytes either way."""
    limits = limits if limits is not None else RenderLimits()
    problems = check_template(template, variables, frame.columns)
    if problems:
        raise TemplateProblem("; ".join(problems))
    compiled = CompiledTemplate.compile(template)
    # Values are stripped; an empty or whitespace-only cell is left out of the context, so
    # StrictUndefined turns it into an error for this row only (while `default` still works).
    columns = list(dict.fromkeys(variables.values()))
    # The row index first: a template without variables selects no column, yet renders every row.
    cells = frame.with_row_index("_i").select(
        "_i", *(pl.col(c).cast(pl.String).str.strip_chars().replace("", None).alias(c) for c in columns)
    )
    try:
        fast: FastTemplate | None = FastTemplate.compile(_ENV, template, variables)
    except NotCompilable:
        fast = None
    if fast is None:
        out = _render_rows(cells, compiled, template, variables, limits)
    else:
        heavy = fast.could_exceed(cells, limits.max_message_chars)
        out = _render_fast(fast, cells.filter(~heavy) if heavy.any() else cells, compiled, template, variables, limits)
        if heavy.any():
            slow = _render_rows(cells.filter(heavy), compiled, template, variables, limits)
            out = pl.concat([out, slow]).sort("_i")
    out = frame.hstack(out.drop("_i"))
    if limits.signed_sms is not None:
        out = limits.signed_sms.reject_over(out)
    if limits.channel in PARAMETER_CHANNELS:
        out = reject_broken_parameters(out, template, _columns_read(template, variables))
    rendered = out.filter(pl.col("_reason").is_null()).drop("_reason", "_detail")
    failed = out.filter(pl.col("_reason").is_not_null())
    rejects = (
        failed.select(
            pl.col("row_number").cast(pl.Int64),
            pl.col("_reason").alias("reason"),
            pl.col("_detail").alias("detail"),
        )
        if failed.height
        else empty_rejects()
    )
    return rendered, rejects.cast(REJECTS_SCHEMA)


def _render_fast(
    fast: FastTemplate, cells: pl.DataFrame, compiled: CompiledTemplate, template: TemplateSpec,
    variables: dict[str, str], limits: RenderLimits,
) -> pl.DataFrame:  # fmt: skip
    """The compiled form over `cells` (rows it cannot make too long), the rows it is unsure about by
    Jinja2: _i, text, params_json, _reason, _detail."""
    done = fast.render(cells)
    missing, empty = pl.col("_missing"), pl.col("_empty")
    ok = missing.is_null() & empty.is_null()
    out = done.select(
        text=pl.when(ok).then("text"),
        params_json=pl.when(ok).then("params_json"),
        _reason=pl.when(~ok).then(pl.lit("missing_variable")),
        _detail=pl.when(missing.is_not_null())
        .then(missing.replace_strict(_missing_details(variables), default=None))
        .otherwise(empty),
    )
    unsure = done["_unsure"]
    if unsure.any():  # rows the compiled form is unsure about: Jinja2 renders them
        where = unsure.arg_true()
        again = _render_rows(cells.filter(unsure), compiled, template, variables, limits)
        out = out.with_columns(out[c].scatter(where, again[c]) for c in ("text", "params_json", "_reason", "_detail"))
    return out.insert_column(0, cells["_i"])


def _missing_details(variables: dict[str, str]) -> dict[str, str]:
    return {name: _missing_detail(f"'{name}' is undefined", variables) for name in variables}


def _render_rows(
    cells: pl.DataFrame, compiled: CompiledTemplate, template: TemplateSpec, variables: dict[str, str],
    limits: RenderLimits,
) -> pl.DataFrame:
    """Jinja2 per row: _i, text, params_json, _reason, _detail."""
    names = list(variables)
    texts: list[str | None] = []
    params_json: list[str | None] = []
    reasons: list[str | None] = []
    details: list[str | None] = []
    position = {c: i for i, c in enumerate(cells.columns)}
    for row in cells.iter_rows():
        context = {n: row[position[variables[n]]] for n in names if row[position[variables[n]]]}
        reason, detail, text, params = None, None, None, None
        try:
            text, params = compiled.render(context, limits)
            detail = _empty_parameter(params)
            reason = "missing_variable" if detail else None
        except UndefinedError as exc:
            reason, detail = "missing_variable", _missing_detail(str(exc), variables)
        except RenderLimit as exc:
            reason, detail = "message_too_long", str(exc)
        except SecurityError as exc:  # the template itself is unsafe: no row can be sent
            raise TemplateProblem(f"template {template.name}: {exc}") from None
        except Exception as exc:  # e.g. a filter that fails on this row's value
            reason, detail = "bad_row", f"template cannot render this row: {type(exc).__name__}: {exc}"
        reasons.append(reason)
        details.append(detail)
        texts.append(None if reason else text)
        params_json.append(None if reason else json.dumps(params, ensure_ascii=False))
    if any(reasons):
        gc.collect()  # exceptions caught above may hold this call's frames (and frames) in cycles
    return pl.DataFrame(
        {"_i": cells["_i"], "text": texts, "params_json": params_json, "_reason": reasons, "_detail": details},
        schema={"_i": pl.UInt32, "text": pl.String, "params_json": pl.String, "_reason": pl.String,
                "_detail": pl.String},
    )  # fmt: skip


def _missing_detail(message: str, variables: dict[str, str]) -> str:
    match = _UNDEFINED_NAME.search(message)
    if not match:
        return f"missing value: {message}"
    name = match.group(1)
    column = variables.get(name)
    return f"{name} is empty" if column in (None, name) else f"{name} is empty (column {column})"
