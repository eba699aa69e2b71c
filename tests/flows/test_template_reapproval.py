"""A campaign its template stopped continues by itself once the template is APPROVED again, through real flow runs
against the WhatsApp sandbox and the webhook receiver on loopback: the sandbox pauses the template mid-run and posts
its signed webhook; the test re-approves it through the sandbox (another signed webhook).

- While the dispatcher is alive (it holds for CAMPAIGN_TEMPLATE_HOLD_S) the same run continues and completes.
- When the run has ended (hold 0: it ends Failed), `campaign receipts` ingesting the re-approval schedules a run of
  the same deployment, which a real `serve` process starts and completes.
Either way the sandbox counts every message exactly once."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from pipeline import store
from pipeline.receipts.receiver import create_receiver_app, secrets_from_env
from pipeline.sandbox.whatsapp import SandboxConfig, create_app
from pipeline.sandbox.whatsapp_templates import SandboxNumber, SandboxTemplate
from pipeline.servers import serve_in_thread
from tests.helpers.prefect import FINAL, PrefectServer, deployment, run_deployment
from tests.helpers.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
CAMPAIGN = str(Path(sys.executable).parent / "campaign")
WABA, SENDER = "102290129340398", "106540352242922"
WELCOME = SandboxTemplate(name="welcome_offer", components=[
    {"type": "BODY", "text": "Hi {{1}}, welcome to Acme! Show code {{2}} in our {{3}} store for 10% off."},
    {"type": "BUTTONS", "buttons": [{"type": "QUICK_REPLY", "text": "Stop promotions"}]}])


def _spec(tmp_path: Path, rows: int, rate: float) -> Path:
    audience = tmp_path / "audience.csv"
    lines = [f"+4474008{i:05d},Ann,Leeds,W-{i},yes" for i in range(rows)]
    audience.write_text("phone,first_name,city,coupon,opt_in\n" + "\n".join(lines) + "\n")
    data = yaml.safe_load((ROOT / "campaigns/welcome.yaml").read_text())
    data.update(name="paused", audience=str(audience), receipts_wait_s=0,
                rate_limit={"max_per_second": rate, "concurrency": 4})
    data["provider"] = {**data["provider"], "options": {"waba_id": WABA}}
    path = tmp_path / "paused.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _stack(tmp_path: Path) -> tuple[Any, Path, Path]:
    spool = tmp_path / "spool"
    spool.mkdir()
    receiver = serve_in_thread(create_receiver_app(spool, secrets_from_env(), rotate_after_s=0.2))
    return receiver, spool, tmp_path / "campaigns.sqlite"


def _sandbox(hook: str, pause_after: int) -> Any:
    return create_app(SandboxConfig(
        access_token="test-token", app_secret="test-app-secret", fail_rate=0.0, pause_after=pause_after,
        template_set=[WELCOME], phone_numbers=[SandboxNumber(id=SENDER)], webhook_url=f"{hook}/webhooks/whatsapp",
        webhook_delay_s=(0.0, 0.02)))


def _status_changes(db_path: Path) -> list[str]:
    if not db_path.exists():
        return []
    with store.connect(str(db_path)) as db:
        return [r.new_value for r in db.rows("""SELECT new_value FROM template_changes WHERE kind = 'status'
                                               AND source = 'webhook' ORDER BY change_id""")]


def _approve(url: str) -> None:
    with httpx.Client(base_url=url, trust_env=False) as client:
        client.post("/_sandbox/templates/welcome_offer", json={"status": "APPROVED"}).raise_for_status()


def test_paused_mid_run_then_reapproved_the_live_dispatcher_continues_in_the_same_run(
        prefect_harness: PrefectServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.campaign import campaign_flow

    rows, pause_after = 400, 150
    monkeypatch.setenv("CAMPAIGN_TEMPLATE_HOLD_S", "120")
    spec = _spec(tmp_path, rows, rate=200)
    receiver, spool, db_path = _stack(tmp_path)
    with receiver as hook:
        app = _sandbox(hook, pause_after)
        sandbox = app.state.sandbox
        with serve_in_thread(app) as url:
            def approve_once_paused() -> None:
                # The dispatcher has ingested the PAUSED webhook (its registry says so): re-approve.
                wait_for(lambda: "PAUSED" in _status_changes(db_path), timeout_s=120,
                         what="the PAUSED webhook in the flow's registry")
                _approve(url)

            helper = threading.Thread(target=approve_once_paused, daemon=True)
            helper.start()
            state = campaign_flow(str(spec), database=str(db_path), spool_dir=str(spool),
                                  reports_dir=str(tmp_path / "reports"), provider_base_url=url, return_state=True)
            helper.join(timeout=5)
    assert state.is_completed(), state
    summary = state.result()
    assert summary["dispatch"]["sent"] == rows and summary["dispatch"]["stopped_reason"] is None
    assert _status_changes(db_path)[-2:] == ["PAUSED", "APPROVED"]
    # The sandbox stopped accepting at its pause: the rest went after the re-approval, each message once.
    assert sandbox.accepted == rows and sandbox.duplicate_callback_data == 0
    assert len(sandbox.accepted_callback_data()) == rows
    with store.connect(str(db_path)) as db:
        assert dict(db.rows("SELECT state, count(*) FROM outbox GROUP BY state")) == {"sent": rows}
        assert db.scalar("SELECT count(*) FROM template_waits") == 0  # nothing left waiting


def test_paused_run_ends_failed_then_reapproval_ingested_schedules_the_deployment_which_completes(
        prefect_harness: PrefectServer, tmp_path: Path) -> None:
    server, rows, pause_after = prefect_harness, 300, 100
    env = {**server.env, "CAMPAIGN_TEMPLATE_HOLD_S": "0"}
    script = ("from flows.serve import load_flow, serve\n"
              "serve(load_flow('flows/campaign.py:campaign_flow').to_deployment(name='reapproval-test'))\n")
    serving = server.procs.start("serve-reapproval-test", [sys.executable, "-c", script], env=env, cwd=tmp_path)
    spec = _spec(tmp_path, rows, rate=100)
    receiver, spool, db_path = _stack(tmp_path)
    try:
        with receiver as hook, server.client() as api:
            app = _sandbox(hook, pause_after)
            sandbox = app.state.sandbox
            with serve_in_thread(app) as url:
                found = server.wait_for(lambda: deployment(api, "campaign/reapproval-test"), timeout_s=90,
                                        what="the served test deployment")
                first = run_deployment(api, "campaign/reapproval-test", {
                    "spec_path": str(spec), "database": str(db_path), "spool_dir": str(spool),
                    "reports_dir": str(tmp_path / "reports"), "provider_base_url": url})

                def runs() -> list[dict[str, Any]]:
                    return api.post("/flow_runs/filter", json={
                        "deployments": {"id": {"any_": [found["id"]]}}, "sort": "EXPECTED_START_TIME_ASC"}).json()

                ended = server.wait_for(lambda: [r for r in runs() if r["state_type"] in FINAL], timeout_s=120,
                                        what="the first run to end")
                assert [r["state_type"] for r in ended] == ["FAILED"] and ended[0]["id"] == first
                assert "welcome_offer" in ended[0]["state"]["message"]
                assert sandbox.accepted == pause_after
                with store.connect(str(db_path)) as db:
                    waiting = db.rows("SELECT deployment_id, continued_at FROM template_waits")
                    assert [(str(d), c) for d, c in waiting] == [(found["id"], None)]
                    assert db.scalar("SELECT count(*) FROM outbox WHERE state = 'queued'") == rows - pause_after

                _approve(url)  # the sandbox posts the signed APPROVED webhook to the receiver, which spools it

                def ingest() -> bool:  # the operator's ingest (the collect-receipts deployment does the same)
                    done = subprocess.run([CAMPAIGN, "receipts", "--db", str(db_path), "--spool-dir", str(spool)],
                                          env={**env, "PATH": os.environ.get("PATH", "")}, cwd=tmp_path,
                                          capture_output=True, text=True, timeout=120)
                    assert done.returncode == 0, done.stdout + done.stderr
                    return "continues in flow run" in done.stdout

                wait_for(ingest, timeout_s=120, every_s=1.0, what="`campaign receipts` to schedule the continuation")

                def all_done() -> list[dict[str, Any]] | None:
                    got = runs()
                    return got if len(got) == 2 and all(r["state_type"] in FINAL for r in got) else None

                done = server.wait_for(all_done, timeout_s=180, what="the continuation to finish",
                                       details=lambda: str([(r["name"], r["state_name"]) for r in runs()]))
    finally:
        server.procs.stop(serving)
    second = done[1]
    assert second["state_type"] == "COMPLETED", second["state"]
    assert {"continuation", "reapproved"} <= set(second["tags"])
    assert done[0]["parameters"].items() <= second["parameters"].items()
    assert sandbox.accepted == rows and sandbox.duplicate_callback_data == 0
    assert len(sandbox.accepted_callback_data()) == rows
    with store.connect(str(db_path)) as db:
        assert dict(db.rows("SELECT state, count(*) FROM outbox GROUP BY state")) == {"sent": rows}
        assert str(db.scalar("SELECT flow_run_id FROM template_waits")) == second["id"]
