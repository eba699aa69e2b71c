"""Operator actions: status (from the ledger or, while a dispatch holds it, its status file),
pause flag, retry-failed and resend-unknown."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

from pipeline import store
from pipeline.cli import main
from pipeline.dispatch import operations
from tests.helpers.whatsapp import queue


def test_retry_failed_requeues_only_retryable_and_expired_deferrals(con):
    queue(con, 5)
    seqs = [r[0] for r in con.execute("SELECT seq FROM outbox ORDER BY seq").fetchall()]
    past, future = datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC) + timedelta(hours=20)
    rows = [("failed", True, None), ("failed", False, None), ("deferred", True, past), ("deferred", True, future),
            ("sent", None, None)]
    for seq, (state, retryable, not_before) in zip(seqs, rows, strict=True):
        con.execute("UPDATE outbox SET state = ?, retryable = ?, not_before = ? WHERE seq = ?",
                    [state, retryable, not_before, seq])
    assert operations.requeue_failed(con, "t") == 2
    got = [r[0] for r in con.execute("SELECT state FROM outbox ORDER BY seq").fetchall()]
    assert got == ["queued", "failed", "queued", "deferred", "sent"]


def test_resend_unknown_is_the_operators_call(con):
    queue(con, 3)
    con.execute("UPDATE outbox SET state = 'unknown' WHERE seq < 2")
    assert operations.requeue_unknown(con, "t") == 2
    assert dict(con.execute("SELECT state, count(*) FROM outbox GROUP BY 1").fetchall()) == {"queued": 3}


def test_status_reads_the_ledger_or_the_running_dispatchs_status_file(tmp_path, capsys):
    db = tmp_path / "campaigns.duckdb"
    with store.connect(db) as con:
        queue(con, 4)
        con.execute("UPDATE outbox SET state = 'sent' WHERE seq = 0")
    assert main(["status", "t", "--db", str(db), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["source"] == "ledger" and status["states"] == {"queued": 3, "sent": 1}

    _, status_file = operations.control_paths(db, "t")
    status_file.parent.mkdir(parents=True)
    status_file.write_text(json.dumps({"sent": 7, "failed": 0, "total": 9, "per_s": 80.0, "eta_s": 0.1}))
    # Another process holds the ledger, as a running dispatch does.
    holder = subprocess.Popen([sys.executable, "-c", f"import duckdb, time; c = duckdb.connect({str(db)!r}); "
                               "print('held', flush=True); time.sleep(30)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["status", "t", "--db", str(db)]) == 0
        out = capsys.readouterr().out
        assert "running dispatch" in out and "7 sent" in out and "ETA" in out
    finally:
        holder.kill()
        holder.wait()


def test_pause_then_resume_clears_the_flag(tmp_path, capsys):
    db = tmp_path / "campaigns.duckdb"
    assert main(["pause", "welcome", "--db", str(db)]) == 0
    pause, _ = operations.control_paths(db, "welcome")
    assert pause.exists() and "pause requested" in capsys.readouterr().out
    assert operations.clear_pause(db, "welcome") and not pause.exists()
