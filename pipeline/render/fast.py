"""Templates compiled to Polars: the Jinja2 AST of a template made of text, `{{ var }}`, string
constants, `~` and the filters upper, lower, capitalize, trim, replace and default becomes one
concat_str expression, byte-identical to what the sandboxed, strict Jinja2 environment renders.
A template with anything else (control flow, attributes, other filters) is not compiled and
templates.render_messages renders it per row; so are single rows whose values hold characters
where Python's and Polars' case mappings differ."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache

import polars as pl
from jinja2 import nodes
from jinja2.sandbox import SandboxedEnvironment

from pipeline.spec import RENDERED_BUTTONS, TemplateSpec

# What Python's str.strip() removes (str.isspace), for trim and the empty-parameter check.
PY_WHITESPACE = "".join(chr(i) for i in range(0x3001) if chr(i).isspace())
_JSON_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"} | {
    chr(i): f"\\u{i:04x}" for i in range(0x20) if chr(i) not in "\n\r\t\b\f"
}


class NotCompilable(Exception):
    """This template needs Jinja2 itself."""


@cache
def _case_exceptions() -> tuple[str, str]:
    """(characters whose upper/lower case Polars maps differently from Python, first characters
    whose title case differs from their upper case — capitalize uses title case), as regex
    classes. Computed once, on first use of a case filter (≈ 0.5 s)."""
    chars = [chr(i) for i in range(0x110000) if not 0xD800 <= i <= 0xDFFF]
    series = pl.Series(chars)
    upper, lower = series.str.to_uppercase().to_list(), series.str.to_lowercase().to_list()
    differ = [c for c, u, lo in zip(chars, upper, lower, strict=True) if c.upper() != u or c.lower() != lo]
    titled = [c for c in chars if c.title() != c.upper()] + ["Σ"]  # final-sigma context is lost by slicing

    def klass(found: list[str]) -> str:
        return "[" + "".join(f"\\x{{{ord(c):X}}}" for c in found) + "]" if found else "[^\\x{0}-\\x{10FFFF}]"

    return klass(differ), klass(titled)


@dataclass(frozen=True)
class _Value:
    expr: pl.Expr  # String; null where the template would raise (an undefined value was used)
    raises: tuple[tuple[pl.Expr, str], ...]  # (condition, variable name), in evaluation order
    unsure: pl.Expr  # rows to render with Jinja2 instead
    size: pl.Expr  # at least expr's length in characters, computed from the inputs' lengths alone


def _literal(text: str) -> _Value:
    return _Value(pl.lit(text, dtype=pl.String), (), pl.lit(False), pl.lit(len(text), dtype=pl.Int64))


def _const(node: nodes.Node) -> object:
    if not isinstance(node, nodes.Const):
        raise NotCompilable(type(node).__name__)
    return node.value


def _filter(node: nodes.Filter, variables: dict[str, str]) -> _Value:
    if node.node is None or node.dyn_args is not None or node.dyn_kwargs is not None:
        raise NotCompilable("filter form")
    inner = _expr(node.node, variables)
    args = [_const(a) for a in node.args]
    kwargs = {k.key: _const(k.value) for k in node.kwargs}
    value, raises, unsure, size = inner.expr, inner.raises, inner.unsure, inner.size
    if node.name in ("default", "d"):
        fallback = kwargs.pop("default_value", args[0] if args else "")
        boolean = kwargs.pop("boolean", args[1] if len(args) > 1 else False)
        if kwargs or len(args) > 2 or not isinstance(fallback, str) or not isinstance(boolean, bool):
            raise NotCompilable("default arguments")
        empty = value.is_null() | (value == "") if boolean else value.is_null()
        size = pl.max_horizontal(size, pl.lit(len(fallback), dtype=pl.Int64))
        if isinstance(node.node, nodes.Name):  # only an undefined value itself is replaced
            return _Value(pl.when(empty).then(pl.lit(fallback)).otherwise(value), (), unsure, size)
        return _Value(pl.when(empty & pl.lit(boolean)).then(pl.lit(fallback)).otherwise(value), raises, unsure, size)
    if kwargs:
        raise NotCompilable("keyword arguments")
    differ, titled = _case_exceptions() if node.name in ("upper", "lower", "capitalize") else ("", "")
    cased = size * 3  # a character's upper or lower case is at most three ("ΐ" -> "Ϊ́")
    if node.name == "upper" and not args:
        return _Value(value.str.to_uppercase(), raises, unsure | value.str.contains(differ), cased)
    if node.name == "lower" and not args:
        return _Value(value.str.to_lowercase(), raises, unsure | value.str.contains(differ), cased)
    if node.name == "capitalize" and not args:
        head, rest = value.str.slice(0, 1).str.to_uppercase(), value.str.slice(1).str.to_lowercase()
        odd = value.str.contains(differ) | value.str.slice(0, 1).str.contains(titled) | value.str.contains("Σ")
        return _Value(pl.concat_str(head, rest), raises, unsure | odd, cased)
    if node.name == "trim" and len(args) <= 1 and all(isinstance(a, str) for a in args):
        return _Value(value.str.strip_chars(args[0] if args and args[0] else PY_WHITESPACE), raises, unsure, size)
    if node.name == "replace" and len(args) in (2, 3):
        old, new, *count = args
        if not isinstance(old, str) or not old or not isinstance(new, str):
            raise NotCompilable("replace arguments")
        hits = size // len(old)
        if not count or count[0] in (None, -1):
            grown = size + hits * max(0, len(new) - len(old))
            return _Value(value.str.replace_all(old, new, literal=True), raises, unsure, grown)
        if isinstance(count[0], int) and count[0] > 0:
            grown = size + pl.min_horizontal(hits, pl.lit(count[0], dtype=pl.Int64)) * max(0, len(new) - len(old))
            return _Value(value.str.replace(old, new, literal=True, n=count[0]), raises, unsure, grown)
    raise NotCompilable(f"filter {node.name}")


def _expr(node: nodes.Node, variables: dict[str, str]) -> _Value:
    if isinstance(node, nodes.Name) and node.ctx == "load" and node.name in variables:
        column = pl.col(variables[node.name])
        length = column.str.len_chars().fill_null(0).cast(pl.Int64)
        return _Value(column, ((column.is_null(), node.name),), pl.lit(False), length)
    if isinstance(node, nodes.Const) and isinstance(node.value, str):
        return _literal(node.value)
    if isinstance(node, nodes.Filter):
        return _filter(node, variables)
    if isinstance(node, nodes.Concat):
        return _joined([_expr(n, variables) for n in node.nodes])
    raise NotCompilable(type(node).__name__)


def _joined(parts: list[_Value]) -> _Value:
    if not parts:
        return _literal("")
    unsure = pl.lit(False)
    for part in parts:
        unsure = unsure | part.unsure
    size = pl.sum_horizontal([p.size for p in parts])
    return _Value(pl.concat_str([p.expr for p in parts]), sum((p.raises for p in parts), ()), unsure, size)


def compile_source(env: SandboxedEnvironment, source: str, variables: dict[str, str]) -> _Value:
    """One Jinja2 source as a String expression over the audience columns."""
    body = env.parse(source).body
    pieces: list[_Value] = []
    for statement in body:
        if not isinstance(statement, nodes.Output):
            raise NotCompilable(type(statement).__name__)
        for node in statement.nodes:
            if isinstance(node, nodes.TemplateData):
                pieces.append(_literal(node.data))
            else:
                pieces.append(_expr(node, variables))
    return _joined(pieces)


def json_string(value: pl.Expr) -> pl.Expr:
    """json.dumps(value, ensure_ascii=False) for a String expression."""
    return pl.concat_str(pl.lit('"'), value.str.replace_many(_JSON_ESCAPES), pl.lit('"'))


def _json_list(values: list[pl.Expr]) -> list[pl.Expr]:
    out: list[pl.Expr] = []
    for i, value in enumerate(values):
        out += [pl.lit(", ")] if i else []
        out.append(value)
    return out


@dataclass(frozen=True)
class FastTemplate:
    text: _Value
    header: tuple[_Value, ...]
    body: tuple[_Value, ...]
    buttons: tuple[_Value | str, ...]  # a rendered url, or a fixed payload
    cards: tuple[_Value | str, ...] = ()  # a carousel's values, flattened (TemplateSpec.card_parts)

    @classmethod
    def compile(cls, env: SandboxedEnvironment, template: TemplateSpec, variables: dict[str, str]) -> FastTemplate:
        """Raises NotCompilable when any part needs Jinja2 itself."""
        buttons: list[_Value | str] = []
        for button in template.buttons:
            if button.sub_type in RENDERED_BUTTONS:
                buttons.append(compile_source(env, button.text or "", variables))
            else:
                buttons.append(button.payload or "")
        return cls(
            text=compile_source(env, template.text, variables),
            header=tuple(compile_source(env, s, variables) for s in template.header_sources),
            body=tuple(compile_source(env, s, variables) for s in template.body),
            buttons=tuple(buttons),
            cards=tuple(compile_source(env, v, variables) if rendered else v for _, v, rendered in template.card_parts),
        )

    def render(self, cells: pl.DataFrame) -> pl.DataFrame:
        """text, params_json, _missing (the first undefined variable, in Jinja2's evaluation
        order: header, body, buttons, then text), _empty (the first header/body parameter that
        renders blank) and _unsure (render this row with Jinja2) for every row of `cells`."""
        rendered = [*self.header, *self.body, *(b for b in self.buttons if isinstance(b, _Value)),
                    *(c for c in self.cards if isinstance(c, _Value)), self.text]
        missing = [pl.when(condition).then(pl.lit(name)) for value in rendered for condition, name in value.raises]
        unsure = pl.lit(False)
        for value in rendered:
            unsure = unsure | value.unsure
        blank: list[pl.Expr] = []
        for part, values in (("header", self.header), ("body", self.body)):
            for i, value in enumerate(values, 1):
                name = f"{part} parameter {{{{{i}}}}} renders empty"
                blank.append(pl.when(value.expr.str.strip_chars(PY_WHITESPACE) == "").then(pl.lit(name)))
        buttons = [json_string(b.expr) if isinstance(b, _Value) else pl.lit(json.dumps(b, ensure_ascii=False))
                   for b in self.buttons]  # fmt: skip
        cards = [json_string(c.expr) if isinstance(c, _Value) else pl.lit(json.dumps(c, ensure_ascii=False))
                 for c in self.cards]  # fmt: skip
        tail = [pl.lit('], "cards": ['), *_json_list(cards), pl.lit("]}")] if self.cards else [pl.lit("]}")]
        params = pl.concat_str(
            pl.lit('{"header": ['), *_json_list([json_string(v.expr) for v in self.header]),
            pl.lit('], "body": ['), *_json_list([json_string(v.expr) for v in self.body]),
            pl.lit('], "buttons": ['), *_json_list(buttons), *tail,
        )  # fmt: skip
        # The streaming engine renders slices of rows on every core; the in-memory one computes each
        # of these few long expressions on one core (1M rows: 0.18 s against 0.32 s on two cores).
        # with_columns, not select: a template without variables is all literals, which must still
        # give one value per row.
        columns = {
            "text": self.text.expr,
            "params_json": params,
            "_missing": pl.coalesce(missing) if missing else pl.lit(None, dtype=pl.String),
            "_empty": pl.coalesce(blank) if blank else pl.lit(None, dtype=pl.String),
            "_unsure": unsure.fill_null(False),
        }
        return cells.lazy().with_columns(**columns).select(*columns).collect(engine="streaming")

    def could_exceed(self, cells: pl.DataFrame, max_chars: int) -> pl.Series:
        """Rows where the text or a parameter might render longer than `max_chars` characters, judged
        from the lengths of the row's values without rendering anything."""
        parts = [self.text, *self.header, *self.body, *(b for b in self.buttons if isinstance(b, _Value)),
                 *(c for c in self.cards if isinstance(c, _Value))]
        over = pl.max_horizontal([p.size for p in parts]) > max_chars
        # Lazy, so that a column's length, used by several parts, is computed once.
        return cells.lazy().with_columns(_over=over.fill_null(False)).select("_over").collect()["_over"]
