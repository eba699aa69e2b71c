"""Settings read from the environment: durations and bounds, one parse each, so every CAMPAIGN_* setting refuses a
bad value with the same one-line message, naming the variable and the value it holds; and the team's controls file."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pipeline.errors import SpecError

_Default = TypeVar("_Default", bound=float | None)


def seconds_setting(name: str, default: _Default, environ: Mapping[str, str] | None = None) -> float | _Default:
    """A number of seconds above 0 from the environment variable `name`, fractions allowed (the fleet's lease renewal
    is 0.5 s); `default` when it is unset or blank. Anything else is a SpecError, which the CLI shows as one `error:`
    line. Read when the setting is needed, never at import, so a bad value stops only what uses it.

    Not positive_setting (below): that one takes whole numbers only."""
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


def positive_setting(name: str, default: int, environ: Mapping[str, str] = os.environ) -> int:
    """A bound from the environment variable `name` (digits, `_` allowed as a separator), else `default`;
    anything but a whole number of at least 1 is a SpecError naming the variable."""
    raw = environ.get(name, "").strip().replace("_", "")
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise SpecError(f"{name}: {environ[name]!r} is not a whole number of at least 1")
    return int(raw)


CONTROLS_FILE = Path(__file__).resolve().parent / "data" / "controls.yaml"


def controls(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """The team's defaults (frequency cap, channels reaching the same app, approval): CAMPAIGN_CONTROLS_FILE, else
    pipeline/data/controls.yaml. A file that cannot be read or is not a mapping is a SpecError naming it."""
    import yaml  # here: the store reads its settings from this module, and needs no YAML

    path = Path(environ.get("CAMPAIGN_CONTROLS_FILE") or CONTROLS_FILE)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(f"{path}: cannot read the controls settings: {exc}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: the controls settings must be a YAML mapping")
    return data
