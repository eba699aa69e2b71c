"""Operator actions: status (from the store, with the progress a running dispatch records there from its own
process), the pause flag, retry-failed and resend-unknown. On SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta

from pipeline import store
from pipeline.cli import main
from pipeline.dispatch import operations
from pipeline.dispatch.locks import current_holder
from pipeline.store import run_many
from tests.helpers.whatsapp import queue


def test_retry_failed_requeues_only_retryable_and_expired_deferrals(db: store.Store):
    queue(db, 5)
    seqs = [r[0] for r in db.rows("SELECT seq FROM outbox ORDER BY seq")]
    past, future = datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC) + timedelta(hours=20)
    rows = [("failed", True, None), ("failed", False, None), ("deferred", True, past), ("deferred", True, future),
            ("sent", None, None)]
    with db.write() as conn:
        run_many(conn, "UPDATE outbox SET state = :state, retryable = :retryable, not_before = :not_before "
                       "WHERE seq = :seq",
                 [{"state": state, "retryable": retryable, "not_before": not_before, "seq": seq}
                  for seq, (state, retryable, not_before) in zip(seqs, rows, strict=True)])
    assert operations.requeue_failed(db, "t") == 2
    got = [r[0] for r in db.rows("SELECT state FROM outbox ORDER BY seq")]
    assert got == ["queued", "failed", "queued", "deferred", "sent"]


def test_resend_unknown_is_the_operators_call(db: store.Store):
    queue(db, 3)
    db.execute("UPDATE outbox SET state = 'unknown' WHERE seq < 2")
    assert operations.requeue_unknown(db, "t") == 2
    assert {state: n for state, n in db.rows("SELECT state, count(*) FROM outbox GROUP BY state")} == {"queued": 3}


# A running dispatch in another process: it holds the campaign's lease and records its progress in the store.
RUNNING = textwrap.dedent("""
    import sys, time
    from pipeline import store
    from pipeline.dispatch.locks import campaign_lock
    from pipeline.dispatch.operations import record_status
    db = store.connect(sys.argv[1])
    with campaign_lock(db, "t", flow_run_id="run-elsewhere"):
        record_status(db, "t", {"sent": 7, "failed": 0, "total": 9, "per_s": 80.0, "eta_s": 0.1,
                                "stopped_reason": None})
        print("running", flush=True)
        time.sleep(60)
""")


def test_status_reads_the_store_and_the_running_dispatchs_progress(db: store.Store, db_url: str, capsys):
    queue(db, 4)
    db.execute("UPDATE outbox SET state = 'sent' WHERE seq = 0")
    assert main(["status", "t", "--db", db_url, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["source"] == "store" and status["states"] == {"queued": 3, "sent": 1}
    assert status["last_run"] is None and status["paused"] is False

    # While a dispatch runs in another process (once, with DuckDB, it held the ledger and status fell back to a
    # status file beside it), status still reads the store, and shows the progress that run recorded there.
    running = subprocess.Popen([sys.executable, "-c", RUNNING, db_url], stdout=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        assert running.stdout is not None and running.stdout.readline().strip() == "running"
        assert current_holder(db, "t").pid == running.pid
        assert main(["status", "t", "--db", db_url]) == 0
        out = capsys.readouterr().out
        assert "campaign t (store)" in out and "queued" in out and "sent" in out
        assert "last dispatch: 7 sent" in out and "of 9" in out and "ETA" in out
        assert main(["status", "t", "--db", db_url, "--json"]) == 0
        status = json.loads(capsys.readouterr().out)
        assert status["states"] == {"queued": 3, "sent": 1} and status["last_run"]["sent"] == 7
    finally:
        running.kill()
        running.wait(timeout=10)


def test_pause_then_resume_clears_the_flag(db: store.Store, db_url: str, capsys):
    queue(db, 2)
    assert main(["pause", "t", "--db", db_url]) == 0
    # The flag is the campaign's row in the store (once a file beside the ledger), for every process to read.
    paused_at = store.utc(db.scalar("SELECT paused_at FROM campaign_control WHERE campaign_id = 't'"))
    assert paused_at is not None and paused_at <= datetime.now(UTC)
    # Not running now: the flag holds its next run, and the command says so.
    assert operations.is_paused(db, "t") and "not running now: its next run sends nothing" in capsys.readouterr().out
    assert main(["status", "t", "--db", db_url]) == 0 and "PAUSED" in capsys.readouterr().out
    assert operations.clear_pause(db, "t") and not operations.is_paused(db, "t")
    assert not operations.clear_pause(db, "t")  # nothing left to clear


def test_pause_refuses_a_campaign_the_store_does_not_know(db: store.Store, db_url: str, capsys):
    queue(db, 1)  # campaign t
    assert main(["pause", "welcme", "--db", db_url]) == 2  # a typo: once it set a flag and status called it PAUSED
    err = capsys.readouterr().err
    assert err.startswith("error: no campaign welcme in store ") and err.count("\n") == 1
    assert db.scalar("SELECT count(*) FROM campaign_control") == 0
    assert main(["status", "welcme", "--db", db_url]) == 2
    # A flag a typo left before this fix is no campaign either.
    db.execute("INSERT INTO campaign_control (campaign_id, paused_at) VALUES ('welcme', :at)", at=datetime.now(UTC))
    assert not operations.campaign_status(db, "welcme")["known"] and operations.campaign_status(db, "t")["known"]


def test_status_and_pause_never_create_a_store(tmp_path, capsys):
    missing = tmp_path / "no" / "such" / "campaigns.sqlite"
    for command in (["status", "x"], ["status", "x", "--json"], ["pause", "x"]):
        assert main([*command, "--db", str(missing)]) == 2
        err = capsys.readouterr().err
        assert err == f"error: no store at {missing}: give the path of an existing store (--db)\n"
    assert not (tmp_path / "no").exists()


def test_the_operators_action_is_done_by_the_run_holding_the_campaign_once(db: store.Store):
    queue(db, 4)
    db.execute("UPDATE outbox SET state = 'unknown' WHERE seq < 2")
    operations.request_pause(db, "t")
    assert operations.after_lease(db, "t") == []  # no command asked anything of this run
    with operations.on_lease("t", "resend-unknown"):
        assert operations.after_lease(db, "other") == []  # another campaign's run in the same process
        assert operations.is_paused(db, "t")
        done = operations.after_lease(db, "t")
        assert done == ["the operator's pause cleared", "2 messages of t queued again (resend-unknown)"]
        assert not operations.is_paused(db, "t")
        assert db.scalar("SELECT count(*) FROM outbox WHERE state = 'queued'") == 4
        operations.request_pause(db, "t")
        assert operations.after_lease(db, "t") == []  # once: a later run in this block is not the command's
    assert operations.is_paused(db, "t")
