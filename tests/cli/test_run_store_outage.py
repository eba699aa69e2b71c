"""Issue 15 through the command line: the PostgreSQL store stopped mid-dispatch under `campaign run` ends the run
with one line naming the store (password hidden) and the command that finishes the campaign, no traceback
anywhere; started again, `campaign resume` (and `resend-unknown` for what no receipt settled) sends every message
exactly once, counted by the sandbox. tests/dispatch/test_store_outage.py proves the engine's side."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import store
from pipeline.receipts.receiver import create_receiver_app, secrets_from_env
from pipeline.sandbox.whatsapp import SandboxConfig, create_app
from pipeline.servers import serve_in_thread
from pipeline.store.local_pg import local_postgres
from tests.helpers.channels import states
from tests.helpers.specs import uk_welcome_spec
from tests.helpers.waiting import wait_for

CAMPAIGN = str(Path(sys.executable).parent / "campaign")
ROWS, STOP_AFTER = 1_000, 200  # messages; accepted by the sandbox before the store goes away
RUN_S = 120  # one `campaign` command, at most
PASSWORD = "s3cret-outage-pw"  # trust authentication ignores it; it must never be shown
# The spec's retry.reconcile_grace_s, which resume and resend-unknown wait for receipts, has to cover a receipt the
# sandbox is still retrying: posted again at most RETRY_MAX_S after a refused (or, under load, too slow) attempt, then
# in a closed spool file within the receiver's 1 s rotation. At the sandbox's default 10 s retry max such a receipt
# missed the 3 s grace, and resend-unknown sent its message again (1001 sends of 1000 once). The retries made short
# rather than the grace long: the grace is waited for by both commands, shorter retries cost nothing.
GRACE_S, RETRY_MAX_S = 3.0, 1.0


def _spec(tmp: Path) -> Path:
    # 100 messages/s: the store goes away seconds into a 10 s dispatch. A short grace: a message in flight when
    # it does waits at most 3 s for a receipt on resume before it counts as unknown.
    return uk_welcome_spec(tmp, ROWS, "2", rate=100, receipts_wait_s=10, grace_s=GRACE_S)


@pytest.mark.timeout(420)
def test_store_gone_mid_run_ends_with_one_line_and_resume_sends_each_message_once(tmp_path: Path,
                                                                                  prefect_harness) -> None:
    env = {**os.environ, "PREFECT_API_URL": prefect_harness.api}  # the session's Prefect, not one per command
    spool, spec = tmp_path / "spool", _spec(tmp_path)
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(local_postgres())  # stopped and removed on the way out, also on failure
        url = pg.create_database("outage").replace("campaign@", f"campaign:{PASSWORD}@")
        receiver = stack.enter_context(serve_in_thread(create_receiver_app(spool, secrets_from_env())))
        app = create_app(SandboxConfig(access_token="test-token", app_secret="test-app-secret", seed=7,
                                       templates={"welcome_offer": "marketing"},
                                       webhook_url=f"{receiver}/webhooks/whatsapp", webhook_delay_s=(0.01, 0.05),
                                       webhook_retry_max_s=RETRY_MAX_S))
        sandbox = app.state.sandbox
        sandbox_url = stack.enter_context(serve_in_thread(app))
        command = [str(spec), "--db", url, "--spool-dir", str(spool), "--reports-dir", str(tmp_path / "reports"),
                   "--provider-base-url", sandbox_url]

        def campaign(name: str) -> None:
            done = subprocess.run([CAMPAIGN, name, *command], env=env, cwd=tmp_path, capture_output=True, text=True,
                                  timeout=RUN_S)
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]

        log = tmp_path / "run.log"
        with log.open("wb") as out:
            run = subprocess.Popen([CAMPAIGN, "run", *command], env=env, cwd=tmp_path, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        stack.callback(lambda: run.poll() is None and os.killpg(run.pid, signal.SIGKILL))
        wait_for(lambda: sandbox.accepted >= STOP_AFTER or run.poll() is not None, timeout_s=RUN_S,
                 what=f"{STOP_AFTER} messages accepted", details=lambda: log.read_text()[-3000:])
        assert run.poll() is None, "the run ended before the store went away:\n" + log.read_text()[-3000:]
        pg.stop("immediate")  # the database server is gone, mid-dispatch
        code = run.wait(timeout=RUN_S)
        output = log.read_text()
        at_stop = sandbox.accepted
        assert STOP_AFTER <= at_stop < ROWS, (at_stop, output[-3000:])  # stopped mid-dispatch

        assert code != 0, output[-3000:]
        assert "Traceback" not in output, output[-5000:]  # neither ours nor Prefect's
        assert PASSWORD not in output
        last = output.strip().splitlines()[-1]
        assert last.startswith(f"error: store {store.shown(store.database_url(url))}: "), output[-3000:]
        assert "campaign welcome stopped" in last and f"`campaign resume {spec} --db <the same store>`" in last

        pg.start()  # the store is back: resume, then the operator's word on what no receipt settled
        campaign("resume")
        with store.connect(url) as db:
            after_resume = states(db)
        assert set(after_resume) <= {"sent", "unknown"} and sum(after_resume.values()) == ROWS, after_resume
        campaign("resend-unknown")
        with store.connect(url) as db:
            final = states(db)
            ours = {r[0] for r in db.rows("SELECT message_id FROM outbox")}
        stats = sandbox.snapshot(with_messages=False)
        accepted_ids = set(sandbox.accepted_callback_data())
    assert final == {"sent": ROWS}
    assert stats["accepted"] == ROWS and stats["unique_callback_data"] == ROWS  # nothing lost
    assert stats["duplicate_callback_data"] == 0  # nothing twice
    assert accepted_ids == ours


def test_the_resume_command_reads_back_as_the_same_arguments_in_a_shell() -> None:
    import argparse
    import shlex

    from pipeline.cli.quiet import stopped_by_store

    args = argparse.Namespace(spec=Path("my campaigns/spring sale.yaml"), campaign_id="spring sale's", db="x")
    line = stopped_by_store(store.StoreError("store sqlite:///x: gone"), args, "spring sale's")
    command = line.split("`")[1]
    assert shlex.split(command)[:5] == ["campaign", "resume", "my campaigns/spring sale.yaml", "--campaign-id",
                                        "spring sale's"]  # then the --db placeholder the operator fills in
