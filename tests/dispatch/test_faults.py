"""With 5xx, timeouts (before and after the provider accepted) and a 429 burst injected by the
sandbox, every message ends delivered or with a permanent error, and none is sent twice —
counted by the sandbox. The same run as benchmarks/faults.py, smaller, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from benchmarks.faults import run


def test_faults_end_delivered_or_permanent_and_never_twice(db_url: str, tmp_path: Path) -> None:
    figures = run(db_url, tmp_path / "spool", 300, client_timeout_s=0.5, grace_s=3.0, rate=300)
    assert figures["duplicates"] == 0
    assert figures["unaccounted"] == 0 and figures["delivered"] + figures["permanent"] == 300
    assert figures["delivered"] > 250
    # The faults really happened and were handled as their kind asks: every request held past the client's
    # timeout after the sandbox accepted it was settled by its receipt (never resent: no duplicate above), and
    # every one held without being accepted was sent again. On a loaded machine an ordinary request can also
    # outlast the timeout; it is one more of either kind, by what the sandbox did with it, hence "at least".
    faults = figures["faults"]
    assert faults.get("5xx", 0) > 0 and figures["throttled"] > 0
    assert figures["reconciled_after_timeout"] >= faults.get("timeout_after_accept", 0) > 0
    assert figures["resent_after_timeout"] >= faults.get("timeout_drop", 0) > 0
