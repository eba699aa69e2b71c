"""The Jinja2 environment templates render in: sandboxed, immutable and strict, with every step charged
to the message's budget (bounded.py): operators, calls and filters are sized before they run, the
values they make and everything a template writes are charged after, and loop turns are counted."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from functools import wraps
from typing import Any

from jinja2 import StrictUndefined, Template, nodes, pass_context
from jinja2.runtime import Context
from jinja2.sandbox import MAX_RANGE, ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

from pipeline.render.bounded import (
    RenderLimit,
    binop_size,
    current,
    format_size,
    percent_size,
    replace_size,
    size_of,
)

# The most a filter not listed below makes of its input (urlencode: one character, twelve).
_GROWTH = 12
_AT_MOST = {name: 1 for name in (
    "abs", "attr", "count", "d", "default", "dictsort", "first", "float", "groupby", "int", "items", "last", "length",
    "list", "map", "max", "min", "random", "reject", "rejectattr", "reverse", "round", "safe", "select",
    "selectattr", "sort", "string", "striptags", "trim", "truncate", "unique", "wordcount",
)} | {"capitalize": 3, "lower": 3, "title": 3, "upper": 3}  # fmt: skip
_AT_MOST |= {"e": 6, "escape": 6, "forceescape": 6, "xmlattr": 6}  # "&" -> "&amp;"


def _indent(text: object, width: object = 4, *_: object) -> int:
    pad = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
    lines = text.count("\n") + 1 if isinstance(text, str) else size_of(text) + 1
    return size_of(text) + lines * pad


def _wordwrap(text: object, width: object = 79, _long: object = True, wrap: object = None, *_: object) -> int:
    size = size_of(text)
    words = len(text.split()) if isinstance(text, str) else size
    lines = size // max(width if isinstance(width, int) else 1, 1) + words
    return size + (lines + 1) * (size_of(wrap) if wrap is not None else 1)


def _joined(items: list[object], separator: object = "", *_: object) -> int:
    return sum(size_of(item) for item in items) + size_of(separator) * max(len(items) - 1, 0)


def _summed(items: list[object], _attribute: object = None, start: object = 0) -> int:
    total = size_of(start) + sum(size_of(item) for item in items)
    sequences = isinstance(start, str | list | tuple) or any(isinstance(i, str | list | tuple) for i in items)
    return total * max(len(items), 1) if sequences else 0  # adding sequences copies them each time


def _pad(value: object) -> int:
    return len(value) if isinstance(value, str) else value if isinstance(value, int) else 0


# Filters whose output can outgrow their input by what their arguments say: sized from the arguments.
_ESTIMATES: dict[str, Callable[..., int]] = {
    "center": lambda value, width=80, *_: max(size_of(value), _pad(width)),
    "indent": _indent,
    "join": _joined,
    "sum": _summed,
    "replace": replace_size,
    "format": lambda value, *args, **kwargs: percent_size(value, kwargs or args) if isinstance(value, str) else 0,
    "wordwrap": _wordwrap,
    "urlize": lambda value, *args, **kwargs: 4 * size_of(value) + (size_of(value) + 1) * (64 + size_of(kwargs)),
    "tojson": lambda value, indent=None: 12 * size_of(value) * (1 + _pad(indent)),
    "batch": lambda value, count, fill=None, *_: size_of(value) + (_pad(count) * (size_of(fill) + 2) if fill else 0),
    "slice": lambda value, count, fill=None, *_: size_of(value) + _pad(count) * (size_of(fill) + 4),
}
_MATERIALIZED = {"join", "sum"}  # sized from their items, so an iterator becomes a list first


def _guard(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    estimate, growth = _ESTIMATES.get(name), _AT_MOST.get(name, _GROWTH)
    passed = 1 if getattr(function, "jinja_pass_arg", None) is not None else 0  # context / environment first

    @wraps(function)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        if len(args) <= passed:
            return function(*args, **kwargs)
        head, value, rest = args[:passed], args[passed], args[passed + 1 :]
        if name in _MATERIALIZED and not isinstance(value, str | list | tuple | dict | set):
            value = list(value)
        budget = current()
        budget.step()
        if estimate is not None:
            need = estimate(value, *rest, **kwargs)
        else:
            need = growth * (size_of(value, budget.chars + 1) + size_of(rest) + size_of(kwargs))
        budget.need(need, f"the filter {name}")
        return function(*head, value, *rest, **kwargs)

    return guarded


_STR_METHODS: dict[str, Callable[..., int]] = {
    "center": lambda text, width=0, *_: max(len(text), _pad(width)),
    "ljust": lambda text, width=0, *_: max(len(text), _pad(width)),
    "rjust": lambda text, width=0, *_: max(len(text), _pad(width)),
    "zfill": lambda text, width=0: max(len(text), _pad(width)),
    "expandtabs": lambda text, tabsize=8: len(text) + text.count("\t") * _pad(tabsize),
    "replace": replace_size,
    "join": lambda text, items: _joined(items, text),
    "translate": lambda text, table: len(text) * max([size_of(v) for v in getattr(table, "values", list)()] or [1]),
}


@pass_context
def _charge(context: Context, value: Any) -> Any:
    """Charges a value built or written; a context filter, so Jinja never folds it at compile time."""
    return current().charge(value)


@pass_context
def _steps(context: Context, iterable: Iterable[Any]) -> Iterator[Any]:
    """A loop's items, each turn a step."""
    budget = current()
    for item in iterable:
        budget.step()
        yield item


def _range(*args: int) -> range:
    numbers = range(*args)
    try:
        count = len(numbers)
    except OverflowError:
        count = MAX_RANGE + 1
    if count > MAX_RANGE:
        raise RenderLimit(f"a range of more than {MAX_RANGE:,} numbers (the sandbox's limit)")
    return numbers


def _wrap(node: nodes.Expr, name: str) -> nodes.Filter:
    return nodes.Filter(node, name, [], [], None, None, lineno=node.lineno)


class _Guard(NodeTransformer):
    """Rewrites a parsed template so that what it builds and writes is charged and its loops counted."""

    def visit_For(self, node: nodes.For) -> nodes.For:
        self.generic_visit(node)
        node.iter = _wrap(node.iter, "_steps")
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        return _wrap(self.generic_visit(node), "_charge")

    def visit_Filter(self, node: nodes.Filter) -> nodes.Node:
        self.generic_visit(node)
        return node if node.node is None else _wrap(node, "_charge")  # node None: a {% filter %} block's

    def visit_Output(self, node: nodes.Output) -> nodes.Output:
        self.generic_visit(node)
        node.nodes = [
            child if isinstance(child, nodes.Filter) and child.name == "_charge"
            else _wrap(nodes.Const(child.data, lineno=child.lineno), "_charge") if isinstance(child, nodes.TemplateData)
            else _wrap(child, "_charge")
            for child in node.nodes
        ]  # fmt: skip
        return node


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox with every operator, call, filter, loop and output charged to the message's budget."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self, **options: Any) -> None:
        options.setdefault("undefined", StrictUndefined)
        super().__init__(**options)
        self.filters = {name: _guard(name, f) for name, f in self.filters.items()} | {
            "_charge": _charge, "_steps": _steps,
        }  # fmt: skip
        self.globals.pop("lipsum", None)  # lorem ipsum of any length: no message needs it
        self.globals["range"] = _range

    def compile_bounded(self, source: str) -> Template:
        """`source` compiled with its values, output and loops charged."""
        return self.from_string(_Guard().visit(self.parse(source)))

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        budget = current()
        budget.step()
        budget.need(binop_size(operator, left, right), f"the operator {operator!r}")
        return budget.charge(super().call_binop(context, operator, left, right))

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        budget = current()
        budget.step()
        owner, name = getattr(obj, "__self__", None), getattr(obj, "__name__", "")
        if isinstance(owner, str) and name in _STR_METHODS:
            if name == "join" and args and not isinstance(args[0], str | list | tuple):
                args = (list(args[0]), *args[1:])
            budget.need(_STR_METHODS[name](owner, *args, **kwargs), f"str.{name}")
        return budget.charge(super().call(context, obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        template = value.__self__

        @wraps(wrapped)
        def sized(*args: Any, **kwargs: Any) -> str:
            current().need(format_size(template, args, kwargs), "str.format")
            return wrapped(*args, **kwargs)

        return sized
