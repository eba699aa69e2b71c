"""Durations read from the environment: one parse, so every CAMPAIGN_*_S setting refuses a bad value with the same
one-line message, naming the variable and the value it holds."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import TypeVar

from pipeline.errors import SpecError

_Default = TypeVar("_Default", bound=float | None)


def seconds_setting(name: str, default: _Default, environ: Mapping[str, str] | None = None) -> float | _Default:
    """A number of seconds above 0 from the environment variable `name`, fractions allowed (the fleet's lease renewal
    is 0.5 s); `default` when it is unset or blank. Anything else is a SpecError, which the CLI shows as one `error:`
    line. Read when the setting is needed, never at import, so a bad value stops only what uses it.

    Not spec.positive_setting: that one takes whole numbers only."""
    env = os.environ if environ is None else environ
    raw = env.get(name, "")
    if not raw.strip():
        return default
    try:
        value = float(raw)  # `_` between digits is accepted, as in Python's own literals
    except ValueError:
        value = math.nan
    # Not inf either: an endless deadline or lease is no bound.
    if not (math.isfinite(value) and value > 0):
        raise SpecError(f"{name}: {raw!r} is not a positive number of seconds")
    return value
