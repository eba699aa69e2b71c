"""benchmarks/soak.py refuses a run past its bounds with one line, before it starts any process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("args", "says"), [
    (["--rate", "3000", "--seconds", "700"], "their product ≤ 2,000,000"),  # 2.1M prebuilt requests
    (["--seconds", "3601", "--rate", "1"], "--seconds ≤ 3600"),
    (["--rows", "1000000,20000001"], "--rows: comma-separated row counts, each in 1..20,000,000"),
    (["--dispatch-rate", "1001"], "--dispatch-rate must be in (0, 1000]"),
])
def test_runs_past_the_bounds_are_refused(args: list[str], says: str) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "soak.py"), *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 2
    assert says in done.stderr.strip().splitlines()[-1]
    assert done.stdout == ""
