"""Operator actions on a campaign's ledger: status, pause flag, re-queue failed or unknown sends."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from pipeline import store


def control_paths(db_path: Path, campaign_id: str) -> tuple[Path, Path]:
    """The pause flag and the status file of a campaign, beside its ledger."""
    return db_path.parent / "control" / f"{campaign_id}.pause", db_path.parent / "status" / f"{campaign_id}.json"


def request_pause(db_path: Path, campaign_id: str) -> Path:
    pause, _ = control_paths(db_path, campaign_id)
    pause.parent.mkdir(parents=True, exist_ok=True)
    pause.write_text(datetime.now(UTC).isoformat())
    return pause


def clear_pause(db_path: Path, campaign_id: str) -> bool:
    pause, _ = control_paths(db_path, campaign_id)
    if pause.exists():
        pause.unlink()
        return True
    return False


def requeue_failed(con: duckdb.DuckDBPyConnection, campaign_id: str) -> int:
    """Back to the queue: messages whose last attempt failed with a retryable code, and deferred ones
    whose deferral is over. Permanent failures stay failed."""
    return con.execute(
        """
        UPDATE outbox SET state = 'queued', not_before = NULL, updated_at = now()
        WHERE campaign_id = ? AND state IN ('failed', 'deferred') AND retryable
          AND (not_before IS NULL OR not_before <= now())
        """,
        [campaign_id],
    ).fetchall()[0][0]


def requeue_unknown(con: duckdb.DuckDBPyConnection, campaign_id: str) -> int:
    """The operator's decision: messages whose send could not be reconciled go out again."""
    return con.execute(
        "UPDATE outbox SET state = 'queued', updated_at = now() WHERE campaign_id = ? AND state = 'unknown'",
        [campaign_id],
    ).fetchall()[0][0]


def campaign_status(db_path: Path, campaign_id: str) -> dict[str, Any]:
    """Counts by state from the ledger; while a dispatch holds the ledger, its status file instead."""
    pause, status_file = control_paths(db_path, campaign_id)
    live = json.loads(status_file.read_text()) if status_file.exists() else None
    try:
        con = store.connect(db_path, read_only=True)
    except duckdb.Error:  # held by a running dispatch (another process is the one writer)
        if live is None:
            raise
        return {"campaign_id": campaign_id, "source": "running dispatch", "paused": pause.exists(), **live}
    with con:
        states = dict(con.execute(
            "SELECT state, count(*) FROM outbox WHERE campaign_id = ? GROUP BY state ORDER BY 1", [campaign_id]
        ).fetchall())
        deferred_until = con.execute(
            "SELECT min(not_before) FROM outbox WHERE campaign_id = ? AND state = 'deferred'", [campaign_id]
        ).fetchall()[0][0]
    return {
        "campaign_id": campaign_id, "source": "ledger", "states": states, "paused": pause.exists(),
        "deferred_until": deferred_until.isoformat() if deferred_until else None,
        "last_run": live,
    }
