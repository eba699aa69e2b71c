"""Bounded Jinja2 evaluation: rendering one message has a budget (RenderLimits: characters built, steps
taken). Every value a template builds or writes is measured and charged to it, and the operations that
could allocate far more than their inputs ('a' * 10**9, 2 ** 10**9, center(10**9), '%09999999d' % 1,
...) are refused before they allocate. Going over raises RenderLimit, which rejects that one message."""

from __future__ import annotations

import itertools
import re
import string
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from pipeline.render.limits import RenderLimits

_HUGE = 1 << 62  # the size of what cannot be estimated (a `*` width): always over budget


class RenderLimit(Exception):
    """Rendering one message went past a bound; the message says which."""


class Budget:
    """What is left of one message's budget."""

    def __init__(self, limits: RenderLimits) -> None:
        self.limits, self.chars, self.steps = limits, limits.max_template_chars, limits.max_template_steps

    def step(self) -> None:
        self.steps -= 1
        if self.steps < 0:
            limit = self.limits.max_template_steps
            raise RenderLimit(f"the template takes more than {limit:,} steps (loop turns, calls, values) per message")

    def need(self, chars: int, what: str) -> None:
        """Refuses, before it is built, a value of about `chars` characters."""
        if chars > self.chars:
            limit = self.limits.max_template_chars
            raise RenderLimit(f"{what} would build {chars:,} characters; a template may build {limit:,} per message")

    def charge(self, value: Any, what: str = "the template") -> Any:
        self.step()
        # A range is lazy: what it would make is sized where it is made into something.
        chars = 16 if isinstance(value, range) else size_of(value, self.chars + 1)
        self.need(chars, what)
        self.chars -= chars
        return value


_CURRENT: ContextVar[Budget | None] = ContextVar("render_budget", default=None)


def current() -> Budget:
    """The budget of the message being rendered (a fresh default one outside a render: Jinja folds
    constant expressions when it compiles a template)."""
    budget = _CURRENT.get()
    return budget if budget is not None else Budget(RenderLimits())


@contextmanager
def bounded(limits: RenderLimits) -> Iterator[Budget]:
    """Renders inside this block share one budget."""
    token = _CURRENT.set(Budget(limits))
    try:
        yield _CURRENT.get()  # type: ignore[misc]
    finally:
        _CURRENT.reset(token)


def _digits(number: int) -> int:
    return number.bit_length() * 30103 // 100000 + 2


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0


def size_of(value: object, cap: int = _HUGE) -> int:
    """About len(str(value)), counted without building it; counting stops past `cap`."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, bool) or value is None:
        return 5
    if isinstance(value, int):
        return _digits(value)
    if isinstance(value, float):
        return 24
    if isinstance(value, range):
        return len(value) * (_digits(max(abs(value.start), abs(value.stop))) + 2) + 8
    if isinstance(value, dict):
        items: Iterable[object] = itertools.chain.from_iterable(value.items())
    elif isinstance(value, list | tuple | set | frozenset):
        items = value
    else:  # other objects print short (a macro, a namespace: their values were charged when built)
        return 64
    total = 2
    for item in items:
        total += size_of(item, cap - total) + 2
        if total > cap:
            break
    return total


_PERCENT = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?[a-zA-Z%]")


def _width(digits: str) -> int:
    return _HUGE if digits == "*" or len(digits) > 18 else int(digits or 0)


def percent_size(template: str, values: object) -> int:
    """`template % values`: the widths and precisions its conversions ask for, and the values."""
    widths = sum(_width(w) + _width(p) for w, p in _PERCENT.findall(template))
    return len(template) + widths + 4 * size_of(values)


def format_size(template: str, args: object, kwargs: object) -> int:
    """`template.format(*args, **kwargs)`, likewise; a nested `{}` in a format spec cannot be sized."""
    total = len(template) + 4 * (size_of(args) + size_of(kwargs))
    try:
        specs = [spec for _, _, spec, _ in string.Formatter().parse(template) if spec]
    except ValueError:  # the call itself says what is wrong
        return total
    for spec in specs:
        total += _HUGE if "{" in spec else sum(_width(d) for d in re.findall(r"\d+", spec))
    return total


def replace_size(text: object, old: object, new: object, count: object = None) -> int:
    size = size_of(text)
    if not (isinstance(text, str) and isinstance(old, str) and isinstance(new, str)):
        return size + (size + 1) * (size_of(new) + 2)
    hits = text.count(old) if old else size + 1
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    return size + hits * max(0, len(new) - len(old))


def binop_size(operator: str, left: object, right: object) -> int:
    """What `left <operator> right` builds, judged before it is built."""
    sequence = str | list | tuple
    if operator == "*":
        if isinstance(left, sequence) and isinstance(right, int):
            return size_of(left) * max(right, 0)
        if isinstance(right, sequence) and isinstance(left, int):
            return size_of(right) * max(left, 0)
        if isinstance(left, int) and isinstance(right, int):
            return _digits(left) + _digits(right)
    if operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
        return left.bit_length() * right * 30103 // 100000 + 2
    if operator == "%" and isinstance(left, str):
        return percent_size(left, right)
    if operator == "+" and isinstance(left, sequence) and isinstance(right, sequence):
        return size_of(left) + size_of(right)
    return 0
