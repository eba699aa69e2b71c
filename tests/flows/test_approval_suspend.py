"""Approval of a deployment run: the run is suspended (`suspend_flow_run`, flows/approval.py), its process ends, and
the answer resumes it: whatever serves the deployment starts it again, preparation repeats (queueing adds nothing),
the suspend with the same key returns the answer, and an approval dispatches while a rejection sends nothing.

The first test goes through the drop folder: the watcher (flows/watcher.py) starts each upload as a run of the
campaign deployment with origin "upload", which waits for an approval by default (pipeline/data/controls.yaml)
though its spec does not ask for one. The deployment is served by a real `serve` process against the session's
Prefect server; the sandbox runs in this process on loopback; the store is a SQLite file both processes share."""

from __future__ import annotations

import os
import pwd
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline import store
from pipeline.dispatch.approvals import history, pending_request
from pipeline.sandbox.whatsapp import SandboxConfig, create_app
from pipeline.servers import serve_in_thread
from pipeline.upload import inbox
from tests.helpers.prefect import FINAL, PrefectServer, deployment, flow_run, run_deployment

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENT = "campaign/approval-suspend-test"


@pytest.fixture(scope="module")
def served(prefect_harness: PrefectServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """The campaign flow served as a deployment for this module's tests."""
    server = prefect_harness
    script = ("from flows.serve import load_flow, serve\n"
              "serve(load_flow('flows/campaign.py:campaign_flow').to_deployment(name='approval-suspend-test'))\n")
    serving = server.procs.start("serve-approval-suspend", [sys.executable, "-c", script], env=server.env,
                                 cwd=tmp_path_factory.mktemp("serve-approval"))
    try:
        with server.client() as api:
            server.wait_for(lambda: deployment(api, DEPLOYMENT), timeout_s=90, what="the served test deployment")
        yield server
    finally:
        server.procs.stop(serving)


@pytest.fixture
def sandbox() -> Iterator[tuple[str, Any]]:
    app = create_app(SandboxConfig(access_token="test-token", app_secret="test-app-secret",
                                   templates={"welcome_offer": "marketing"}))
    with serve_in_thread(app) as url:
        yield url, app


def _suspended(server: PrefectServer, api: Any, db: Path, campaign_id: str, run_id: str) -> dict[str, Any]:
    """The run, once it is suspended for its first approval request (its process has ended)."""
    def waiting() -> dict[str, Any] | None:
        run = flow_run(api, run_id)
        with store.connect(db) as shared:
            asked = pending_request(shared, campaign_id) if db.exists() else None
        suspended = run["state_type"] == "PAUSED" and run["state"]["state_details"]["pause_reschedule"]
        return run if suspended and asked is not None else None

    return server.wait_for(waiting, timeout_s=150, what=f"flow run {run_id} suspended for its approval",
                           details=lambda: str(flow_run(api, run_id)["state"]))


def _asked_again(api: Any, db: Path, campaign_id: str, run_id: str) -> bool:
    with store.connect(db) as shared:
        waiting = pending_request(shared, campaign_id)
    return bool(waiting and waiting["request_id"].endswith(":2") and flow_run(api, run_id)["state_type"] == "PAUSED")


def _final(server: PrefectServer, api: Any, run_id: str) -> dict[str, Any]:
    return server.wait_for(lambda: (r := flow_run(api, run_id))["state_type"] in FINAL and r, timeout_s=180,
                           what=f"flow run {run_id} to finish", details=lambda: str(flow_run(api, run_id)["state"]))


def test_an_uploaded_run_is_suspended_until_approved_then_sends(served: PrefectServer, sandbox: tuple[str, Any],
                                                                tmp_path: Path) -> None:
    from flows.approval import approve_from_cli
    from flows.watcher import inbox_watcher_flow

    url, app = sandbox
    folders = inbox.Folders.under(tmp_path / "audiences")
    folders.create()
    lines = (ROOT / "audiences/sample.csv").read_text().splitlines()
    (folders.inbox / "summer.csv").write_text("\n".join(lines[:13]) + "\n")
    data = yaml.safe_load((ROOT / "campaigns/inbox-default.yaml").read_text())
    data.update(receipts_wait_s=0)  # nothing about approval: the default for uploads applies
    assert "approval" not in data
    (folders.inbox / "summer.yaml").write_text(yaml.safe_dump(data))
    db = tmp_path / "campaigns.sqlite"
    [started] = inbox_watcher_flow(audiences_dir=str(tmp_path / "audiences"), database=str(db),
                                   spool_dir=str(tmp_path / "spool"), reports_dir=str(tmp_path / "reports"),
                                   provider_base_url=url, campaign_deployment=DEPLOYMENT, settle_s=0)
    assert started["outcome"] == "started"
    cid, run_id = started["campaign_id"], started["flow_run_id"]
    with served.client() as api:
        run = _suspended(served, api, db, cid, run_id)
        assert run["parameters"]["origin"] == "upload" and run["state_name"] == "Suspended"
        # Who dropped the file in (its owner) started the run, and may not approve it: asked again.
        owner = pwd.getpwuid(os.getuid()).pw_name
        assert run["parameters"]["started_by"] == owner
        approve_from_cli(cid, str(db), name=owner, comment="my own upload", reject=False)
        served.wait_for(lambda: _asked_again(api, db, cid, run_id), timeout_s=150, what="asked again")
        assert app.state.sandbox.accepted == 0  # nothing sent while it waits
        approve_from_cli(cid, str(db), name="bob", comment="checked the sample", reject=False)
        done = _final(served, api, run_id)  # started again by the served deployment, by itself
    assert done["state_type"] == "COMPLETED", done["state"]
    with store.connect(db) as shared:
        asked = history(shared, cid)
        sent = shared.scalar("SELECT count(*) FROM outbox WHERE campaign_id = :c AND state = 'sent'", c=cid)
    assert [(h["origin"], h["decision"], h["approver"]) for h in asked] == [
        ("upload", "refused", owner), ("upload", "approved", "bob")]
    assert "self-approval is not allowed" in asked[0]["comment"] and asked[1]["comment"] == "checked the sample"
    assert sent == app.state.sandbox.accepted > 0 and app.state.sandbox.duplicate_callback_data == 0


def test_a_suspended_run_that_is_rejected_sends_nothing(served: PrefectServer, sandbox: tuple[str, Any],
                                                        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Also: while it waits, suspended (it holds no lease), a `campaign resume` of the campaign is refused."""
    from flows.approval import approve_from_cli
    from pipeline.cli.parser import main

    url, app = sandbox
    audience = tmp_path / "reject.csv"
    audience.write_text("phone,first_name,city,coupon,opt_in\n" + "".join(
        f"+44740012340{i},Ann,Leeds,W-{i},yes\n" for i in range(4)))
    data = yaml.safe_load((ROOT / "campaigns/welcome.yaml").read_text())
    data.update(name="suspend-reject", audience=str(audience), receipts_wait_s=0,
                approval={"required": True, "approvers": ["bob"]})
    spec = tmp_path / "reject.yaml"
    spec.write_text(yaml.safe_dump(data))
    db = tmp_path / "campaigns.sqlite"
    with served.client() as api:
        run_id = run_deployment(api, DEPLOYMENT, {
            "spec_path": str(spec), "database": str(db), "spool_dir": str(tmp_path / "spool"),
            "reports_dir": str(tmp_path / "reports"), "provider_base_url": url})
        _suspended(served, api, db, "suspend-reject", run_id)
        assert main(["resume", str(spec), "--db", str(db), "--spool-dir", str(tmp_path / "spool"),
                     "--reports-dir", str(tmp_path / "reports"), "--provider-base-url", url]) == 2
        assert f"waits for an approval in flow run {run_id}" in capsys.readouterr().err
        assert app.state.sandbox.accepted == 0
        approve_from_cli("suspend-reject", str(db), name="bob", comment="wrong audience", reject=True)
        done = _final(served, api, run_id)
    assert done["state_type"] == "FAILED" and "rejected by bob: wrong audience" in done["state"]["message"]
    assert app.state.sandbox.accepted == 0
    with store.connect(db) as shared:
        asked = history(shared, "suspend-reject")
        queued = shared.scalar("SELECT count(*) FROM outbox WHERE state = 'queued'")
    assert [(h["origin"], h["decision"], h["approver"]) for h in asked] == [("manual", "rejected", "bob")]
    assert queued == 4


def test_a_suspended_run_nobody_answered_in_time_is_recorded_and_cancelled_by_the_next_run(
        served: PrefectServer, sandbox: tuple[str, Any], tmp_path: Path) -> None:
    """Prefect fails an overdue suspended run only when someone resumes it: the next run of the campaign records the
    request as expired, ends the waiting run, and asks for an approval itself (the expiry stands)."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from flows.approval import approve_from_cli
    from pipeline.cli.parser import main

    url, app = sandbox
    audience = tmp_path / "late.csv"
    audience.write_text("phone,first_name,city,coupon,opt_in\n" + "".join(
        f"+44740012350{i},Ann,Leeds,W-{i},yes\n" for i in range(3)))
    data = yaml.safe_load((ROOT / "campaigns/welcome.yaml").read_text())
    data.update(name="suspend-late", audience=str(audience), receipts_wait_s=0,
                approval={"required": True, "timeout_s": 8})
    spec = tmp_path / "late.yaml"
    spec.write_text(yaml.safe_dump(data))
    db = tmp_path / "campaigns.sqlite"
    args = ["resume", str(spec), "--db", str(db), "--spool-dir", str(tmp_path / "spool"),
            "--reports-dir", str(tmp_path / "reports"), "--provider-base-url", url, "--started-by", "ops"]
    with served.client() as api:
        run_id = run_deployment(api, DEPLOYMENT, {
            "spec_path": str(spec), "database": str(db), "spool_dir": str(tmp_path / "spool"),
            "reports_dir": str(tmp_path / "reports"), "provider_base_url": url})
        first = _suspended(served, api, db, "suspend-late", run_id)
        assert first["state_name"] == "Suspended"
        with store.connect(db) as shared:
            expires = store.utc(history(shared, "suspend-late")[0]["expires_at"])
        time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 1)
        with ThreadPoolExecutor(1) as pool:
            resumed = pool.submit(main, args)
            again = served.wait_for(lambda: (p := _pending_of(db, "suspend-late")) and p["flow_run_id"] != run_id
                                    and p, timeout_s=120, what="the next run's own request")
            approve_from_cli("suspend-late", str(db), name="bob", comment="too late now", reject=True)
            assert resumed.result(timeout=120) == 2
        assert again["origin"] == "manual"
        cancelled = flow_run(api, run_id)
    # Ended, no longer waiting: Prefect turns any move of an overdue paused run into its own Failed state.
    assert cancelled["state_type"] in ("CANCELLED", "FAILED"), cancelled["state"]
    with store.connect(db) as shared:
        asked = history(shared, "suspend-late")
    assert [(h["decision"], h["approver"]) for h in asked] == [("expired", None), ("rejected", "bob")]
    assert asked[0]["comment"].startswith("no answer by ") and app.state.sandbox.accepted == 0


def _pending_of(db: Path, campaign_id: str) -> dict[str, Any] | None:
    with store.connect(db) as shared:
        return pending_request(shared, campaign_id)
