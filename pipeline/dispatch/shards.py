"""Dispatch sharded by sender across processes.

DuckDB has one writer per file, so each shard gets a ledger file of its own holding the outbox rows
of its senders; its process dispatches them with its own rate limits. The coordinator then merges
each shard's outcomes and transitions back into the campaign's ledger — idempotently, so a merge
after a crash (of a shard or of the coordinator) just runs again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb

from pipeline import store

# What a shard needs to dispatch on its own: its messages, the campaign row (for the spec), and the
# receipts seen so far (to reconcile crash leftovers).
_COPIED = ("campaigns", "outbox")


def plan_shards(senders: list[str], processes: int) -> list[list[str]]:
    """Senders dealt round-robin over at most `processes` shards (a sender never spans two)."""
    processes = max(1, min(processes, len(senders)))
    return [senders[i::processes] for i in range(processes)]


def shard_path(shard_dir: Path, campaign_id: str, index: int) -> Path:
    return shard_dir / f"{campaign_id}.shard{index}.duckdb"


def split(con: duckdb.DuckDBPyConnection, campaign_id: str, shard_dir: Path, plan: list[list[str]]) -> list[Path]:
    """Writes one ledger per shard with the campaign and its senders' messages still to send."""
    shard_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, senders in enumerate(plan):
        path = shard_path(shard_dir, campaign_id, index)
        for leftover in (path, Path(f"{path}.wal")):
            leftover.unlink(missing_ok=True)
        store.connect(path).close()  # the schema
        con.execute(f"ATTACH '{path}' AS shard")
        try:
            con.execute("INSERT INTO shard.campaigns SELECT * FROM campaigns WHERE campaign_id = ?", [campaign_id])
            con.execute(
                """
                INSERT INTO shard.outbox SELECT * FROM outbox
                WHERE campaign_id = ? AND list_contains(?, sender) AND state IN ('queued', 'sending')
                """,
                [campaign_id, senders],
            )
        finally:
            con.execute("DETACH shard")
        paths.append(path)
    return paths


def merge(con: duckdb.DuckDBPyConnection, campaign_id: str, paths: list[Path]) -> int:
    """Takes each shard's outcomes into the campaign's ledger; returns how many rows changed."""
    changed = 0
    for path in paths:
        if not path.exists():
            continue
        con.execute(f"ATTACH '{path}' AS shard (READ_ONLY)")
        try:
            con.execute("BEGIN")
            rows = con.execute(
                """
                UPDATE outbox SET state = s.state, attempts = s.attempts,
                       provider_message_id = s.provider_message_id, error_code = s.error_code,
                       error_detail = s.error_detail, sent_at = s.sent_at, updated_at = s.updated_at,
                       not_before = s.not_before, retryable = s.retryable
                FROM shard.outbox AS s
                WHERE outbox.message_id = s.message_id AND outbox.campaign_id = ?
                  AND coalesce(s.updated_at, s.queued_at) >= coalesce(outbox.updated_at, outbox.queued_at)
                  AND (outbox.state IS DISTINCT FROM s.state OR outbox.attempts IS DISTINCT FROM s.attempts)
                """,
                [campaign_id],
            ).fetchall()[0][0]
            con.execute(
                """
                INSERT INTO outbox_transitions
                SELECT t.* FROM shard.outbox_transitions t
                WHERE t.campaign_id = ? AND NOT EXISTS (
                    SELECT 1 FROM outbox_transitions m
                    WHERE m.campaign_id = t.campaign_id AND m.seq = t.seq AND m.state = t.state
                      AND m.changed_at = t.changed_at)
                """,
                [campaign_id],
            )
            con.execute("COMMIT")
            changed += rows
        except BaseException:
            con.execute("ROLLBACK")
            raise
        finally:
            con.execute("DETACH shard")
    return changed


def run_shards(
    paths: list[Path], campaign_id: str, *, spool_dir: Path | None, base_url: str | None,
    env: dict[str, str] | None = None,
) -> list[dict]:
    """Dispatches every shard in its own process (`python -m pipeline.cli.shard_worker`) and waits."""
    procs = []
    for path in paths:
        command = [sys.executable, "-m", "pipeline.cli.shard_worker", str(path), campaign_id]
        if spool_dir is not None:
            command += ["--spool-dir", str(spool_dir)]
        if base_url:
            command += ["--provider-base-url", base_url]
        procs.append(subprocess.Popen(command, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, text=True))
    results = []
    for path, proc in zip(paths, procs, strict=True):
        out, _ = proc.communicate()
        last = out.strip().splitlines()[-1] if out.strip() else "{}"
        result = json.loads(last) if last.startswith("{") else {"error": last}
        results.append({"shard": path.name, "exit_code": proc.returncode, **result})
    return results
