"""The allocator settings pipeline/__init__.py gives Polars: jemalloc itself reports them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Appends stats_print so that jemalloc prints the options it runs with when the process exits.
PROBE = """
import os, pipeline
os.environ["_RJEM_MALLOC_CONF"] += ",stats_print:true"
import polars as pl
pl.DataFrame({"a": [1]})
"""


def _options(env: dict[str, str]) -> dict[str, str]:
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    options = {}
    for line in done.stderr.splitlines():
        key, _, value = line.strip().partition(": ")
        if key.startswith("opt."):
            options[key] = value.split(" ")[0]
    return options


def test_polars_runs_with_our_allocator_settings() -> None:
    env = {k: v for k, v in os.environ.items() if k != "_RJEM_MALLOC_CONF"}
    options = _options(env)
    assert options["opt.dirty_decay_ms"] == "1000"
    assert options["opt.muzzy_decay_ms"] == "0"
    assert options["opt.narenas"] == str(os.cpu_count())


def test_the_operators_settings_win() -> None:
    options = _options({**os.environ, "_RJEM_MALLOC_CONF": "dirty_decay_ms:750"})
    assert options["opt.dirty_decay_ms"] == "750"
    assert options["opt.muzzy_decay_ms"] == "1000"  # Polars' own default, as without us
