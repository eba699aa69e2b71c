"""The central promise, through the command line: a `campaign run` killed with SIGKILL mid-dispatch, then
`campaign resume` and `campaign resend-unknown`, sends every message once and none twice, counted by the
sandbox. benchmarks/crash.py does this at 20 random moments over 20,000 messages; this is one kill over
2,000, bounded in time, landing after the first few hundred messages have been accepted. On SQLite and on
PostgreSQL: the commands get the store's URL (`--db`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import store
from pipeline.dispatch.locks import current_holder
from pipeline.receipts.receiver import create_receiver_app, secrets_from_env
from pipeline.sandbox.whatsapp import SandboxConfig, create_app
from pipeline.servers import serve_in_thread
from tests.helpers.channels import states
from tests.helpers.specs import uk_welcome_spec
from tests.helpers.waiting import wait_for

CAMPAIGN = str(Path(sys.executable).parent / "campaign")
ROWS, KILL_AFTER = 2_000, 300  # messages; accepted by the sandbox before the kill
RUN_S = 120  # one `campaign` command, at most


def _spec(tmp: Path) -> Path:
    # 400 messages/s: the kill lands seconds before the end. A short grace: a message in flight at the kill
    # waits at most 5 s for a receipt before it counts as unknown.
    return uk_welcome_spec(tmp, ROWS, "1", rate=400, receipts_wait_s=20, grace_s=5)


@pytest.mark.timeout(300)
def test_killed_run_then_resume_and_resend_unknown_send_each_message_once(tmp_path: Path, db_url: str,
                                                                          prefect_harness):
    # The commands report to the session's Prefect harness instead of each starting a server of its own.
    env = {**os.environ, "PREFECT_API_URL": prefect_harness.api}
    spool = tmp_path / "spool"
    spec = _spec(tmp_path)
    with serve_in_thread(create_receiver_app(spool, secrets_from_env())) as receiver:
        config = SandboxConfig(access_token="test-token", app_secret="test-app-secret", seed=5,
                               templates={"welcome_offer": "marketing"}, webhook_url=f"{receiver}/webhooks/whatsapp",
                               webhook_delay_s=(0.01, 0.05))
        app = create_app(config)
        sandbox = app.state.sandbox
        with serve_in_thread(app) as url:
            def campaign(command: str) -> subprocess.CompletedProcess[str]:
                done = subprocess.run([CAMPAIGN, command, str(spec), "--db", db_url, "--spool-dir", str(spool),
                                       "--reports-dir", str(tmp_path / "reports"), "--provider-base-url", url],
                                      env=env, cwd=tmp_path, capture_output=True, text=True, timeout=RUN_S)
                assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
                return done

            log = tmp_path / "killed-run.log"
            with log.open("wb") as out:
                run = subprocess.Popen([CAMPAIGN, "run", str(spec), "--db", db_url, "--spool-dir", str(spool),
                                        "--reports-dir", str(tmp_path / "reports"), "--provider-base-url", url],
                                       env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
                try:
                    wait_for(lambda: sandbox.accepted >= KILL_AFTER or run.poll() is not None, timeout_s=RUN_S,
                             what=f"{KILL_AFTER} messages accepted", details=lambda: log.read_text()[-3000:])
                    assert run.poll() is None, "the run ended before the kill:\n" + log.read_text()[-3000:]
                finally:
                    os.killpg(run.pid, signal.SIGKILL)  # the run and anything it started
                    run.wait(timeout=30)
            at_kill = sandbox.accepted
            assert KILL_AFTER <= at_kill < ROWS  # killed mid-dispatch
            with store.connect(db_url) as db:
                in_store = states(db)
                # The killed run's lease is still in the store, but names nobody alive: resume may take it at once.
                assert db.scalar("SELECT count(*) FROM leases WHERE name = 'campaign:welcome'") == 1
                assert current_holder(db, "welcome") is None
            # Every message is in the store; some were claimed (committed `sending`) when the process died.
            assert sum(in_store.values()) == ROWS and in_store.get("sending", 0) > 0, in_store

            # Resume: receipts first, then what was in flight: settled by its receipt, or unknown; the rest is sent.
            campaign("resume")
            with store.connect(db_url) as db:
                after_resume = states(db)
            assert set(after_resume) <= {"sent", "unknown"} and sum(after_resume.values()) == ROWS, after_resume
            # Claimed (committed) before their rate slot, some were in flight without ever leaving.
            assert after_resume.get("unknown", 0) > 0, after_resume

            # The operator's word: what no receipt named is sent again, and it had never reached the provider.
            campaign("resend-unknown")
    with store.connect(db_url) as db:
        final = states(db)
        ours = {r[0] for r in db.rows("SELECT message_id FROM outbox")}
        leases = db.scalar("SELECT count(*) FROM leases")
    assert final == {"sent": ROWS} and leases == 0  # the last run released the campaign
    assert sandbox.duplicate_callback_data == 0 and sandbox.accepted == ROWS  # nothing twice
    assert set(sandbox.accepted_callback_data()) == ours  # nothing lost
