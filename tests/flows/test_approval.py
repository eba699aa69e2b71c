"""Approval before sending (flows/approval.py) through the campaign flow on the session's Prefect server: the run
waits after its estimate with a run-input form whose description shows the estimate, the rejects and a masked
sample; an answer the spec forbids (self-approval, someone not listed) is refused and asked again; an approval starts
the dispatch, a rejection sends nothing; every request and answer is stored with the campaign. Answers are given as
`campaign approve` gives them (Prefect's resume_flow_run with the form's input)."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline import store
from pipeline.dispatch.approvals import history, pending_request
from pipeline.sandbox.whatsapp import SandboxConfig, create_app
from pipeline.servers import serve_in_thread
from tests.helpers.prefect import PrefectServer
from tests.helpers.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
NUMBERS = [f"+44740012320{i}" for i in range(6)]


def _spec(tmp: Path) -> Path:
    audience = tmp / "approve.csv"
    audience.write_text("phone,first_name,city,coupon,opt_in\n" + "".join(
        f"{n},Ann,Leeds,W-{i},yes\n" for i, n in enumerate(NUMBERS)) + "not-a-number,Bo,Leeds,W-9,yes\n")
    data = yaml.safe_load((ROOT / "campaigns/welcome.yaml").read_text())
    data.update(name="approve", audience=str(audience), receipts_wait_s=0,
                approval={"required": True, "approvers": ["alice", "bob"], "timeout_s": 60})
    spec = tmp / "approve.yaml"
    spec.write_text(yaml.safe_dump(data))
    return spec


def _start(tmp: Path, url: str, pool: ThreadPoolExecutor) -> tuple[Future[Any], str]:
    from flows.campaign import campaign_flow

    db = str(tmp / "campaigns.sqlite")
    run = pool.submit(campaign_flow, str(_spec(tmp)), database=db, spool_dir=str(tmp / "spool"),
                      reports_dir=str(tmp / "reports"), provider_base_url=url, started_by="alice")
    return run, db


def _waiting(db: str, ask: int, api: Any) -> dict[str, Any]:
    """The campaign's request number `ask`, once its run is paused for it (the request is stored just before)."""
    def pending() -> dict[str, Any] | None:
        with store.connect(db) as shared:
            got = pending_request(shared, "approve")
        if not got or not got["request_id"].endswith(f":{ask}"):
            return None
        state = api.get(f"/flow_runs/{got['flow_run_id']}").json()["state"]
        return got if state["type"] == "PAUSED" and state["state_details"]["pause_key"] == f"approval-{ask}" else None

    return wait_for(pending, timeout_s=120, what=f"approval request {ask}", every_s=0.2)


def _form(api: Any, flow_run_id: str, ask: int) -> str:
    """The description Prefect shows above the form (the run input's `-description` key of the pause). Prefect
    writes it beside the form's schema as the run pauses, not before the PAUSED state: waited for, briefly."""
    def described() -> str | None:
        found = api.post(f"/flow_runs/{flow_run_id}/input/filter",
                         json={"prefix": f"paused-approval-{ask}", "limit": 10}).json()
        return next((item["value"] for item in found if item["key"].endswith("-description")), None)

    return wait_for(described, timeout_s=30, what=f"the description of approval form {ask}", every_s=0.1)


def test_self_approval_is_refused_then_an_approval_starts_the_dispatch(prefect_harness: PrefectServer,
                                                                       tmp_path: Path) -> None:
    from flows.approval import approve_from_cli

    app = create_app(SandboxConfig(access_token="test-token", app_secret="test-app-secret",
                                   templates={"welcome_offer": "marketing"}))
    with serve_in_thread(app) as url, ThreadPoolExecutor(1) as pool, prefect_harness.client() as api:
        run, db = _start(tmp_path, url, pool)
        first = _waiting(db, 1, api)
        brief = _form(api, first["flow_run_id"], 1)
        assert "6 messages, USD" in brief and "invalid_number: 1" in brief
        assert "+44*******200" in brief and "+447400123200" not in brief  # a masked sample of the rendered text
        assert app.state.sandbox.accepted == 0  # nothing sent while it waits
        approve_from_cli("approve", db, name="alice", comment="looks fine", reject=False)
        second = _waiting(db, 2, api)  # refused: alice started it; asked again
        assert "self-approval is not allowed" in _form(api, second["flow_run_id"], 2)
        assert app.state.sandbox.accepted == 0
        approve_from_cli("approve", db, name="bob", comment="ok to send", reject=False)
        summary = run.result(timeout=180)
    assert summary["approval"]["approver"] == "bob"
    assert app.state.sandbox.accepted == len(NUMBERS)
    with store.connect(db) as shared:
        asked = history(shared, "approve")
    assert [(h["decision"], h["approver"]) for h in asked] == [("refused", "alice"), ("approved", "bob")]
    assert asked[1]["comment"] == "ok to send" and asked[1]["decided_at"] is not None and asked[1]["messages"] == 6


def test_a_rejection_sends_nothing_and_is_recorded(prefect_harness: PrefectServer, tmp_path: Path) -> None:
    from flows.approval import CampaignNotApproved, approve_from_cli

    app = create_app(SandboxConfig(access_token="test-token", app_secret="test-app-secret",
                                   templates={"welcome_offer": "marketing"}))
    with serve_in_thread(app) as url, ThreadPoolExecutor(1) as pool, prefect_harness.client() as api:
        run, db = _start(tmp_path, url, pool)
        _waiting(db, 1, api)
        approve_from_cli("approve", db, name="carol", comment="not listed", reject=False)  # not an approver
        _waiting(db, 2, api)
        approve_from_cli("approve", db, name="bob", comment="wrong audience", reject=True)
        with pytest.raises(CampaignNotApproved, match="rejected by bob: wrong audience"):
            run.result(timeout=180)
    assert app.state.sandbox.accepted == 0
    with store.connect(db) as shared:
        asked = history(shared, "approve")
        queued = shared.scalar("SELECT count(*) FROM outbox WHERE state = 'queued'")
    assert [(h["decision"], h["approver"]) for h in asked] == [("refused", "carol"), ("rejected", "bob")]
    assert "not one of the approvers" in asked[0]["comment"] and queued == len(NUMBERS)


def test_a_rejection_stands_until_someone_approves_whatever_starts_the_next_run(
        prefect_harness: PrefectServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An uploaded campaign waits by the team's default only (its spec says nothing of approvals). While it waits, a
    `campaign resume` refuses; after a rejection, a `campaign resume` (a manual run, which the default does not make
    wait) still asks first, showing the rejection, and sends only once approved: each message once."""
    from flows.approval import approve_from_cli
    from flows.campaign import campaign_flow
    from pipeline.cli.parser import main

    spec = _spec(tmp_path)
    data = yaml.safe_load(spec.read_text())
    data["approval"] = {"timeout_s": 120}  # whether it waits: the team's default by origin
    spec.write_text(yaml.safe_dump(data))
    db = str(tmp_path / "campaigns.sqlite")
    app = create_app(SandboxConfig(access_token="test-token", app_secret="test-app-secret",
                                   templates={"welcome_offer": "marketing"}))
    with serve_in_thread(app) as url, ThreadPoolExecutor(2) as pool, prefect_harness.client() as api:
        args = ["--db", db, "--spool-dir", str(tmp_path / "spool"), "--reports-dir", str(tmp_path / "reports"),
                "--provider-base-url", url]
        run = pool.submit(campaign_flow, str(spec), database=db, spool_dir=str(tmp_path / "spool"),
                          reports_dir=str(tmp_path / "reports"), provider_base_url=url, origin="upload")
        first = _waiting(db, 1, api)
        assert main(["resume", str(spec), *args]) == 2  # the upload's run waits (holding the campaign): refused
        assert "error: " in capsys.readouterr().err and app.state.sandbox.accepted == 0
        approve_from_cli("approve", db, name="bob", comment="wrong audience", reject=True)
        with pytest.raises(Exception, match="rejected by bob"):
            run.result(timeout=180)
        assert app.state.sandbox.accepted == 0

        resumed = pool.submit(main, ["resume", str(spec), *args, "--started-by", "carol"])
        again = wait_for(lambda: _pending(db, "approve"), timeout_s=120, what="the resumed run's request", every_s=0.2)
        assert again["flow_run_id"] != first["flow_run_id"] and again["origin"] == "manual"
        brief = _form(api, again["flow_run_id"], 1)
        assert "was rejected by bob (wrong audience)" in brief and "nothing is sent until someone approves" in brief
        assert app.state.sandbox.accepted == 0  # the resumed run waits too
        approve_from_cli("approve", db, name="carol", comment="fixed upstream", reject=False)  # who resumed it
        _waiting(db, 2, api)
        approve_from_cli("approve", db, name="dave", comment="fixed upstream", reject=False)
        assert resumed.result(timeout=180) == 0
    assert app.state.sandbox.accepted == len(NUMBERS)
    with store.connect(db) as shared:
        asked = history(shared, "approve")
        states = dict(shared.rows("SELECT state, count(*) FROM outbox GROUP BY state"))
    assert [(h["origin"], h["decision"], h["approver"]) for h in asked] == [
        ("upload", "rejected", "bob"), ("manual", "refused", "carol"), ("manual", "approved", "dave")]
    assert states == {"sent": len(NUMBERS)}


def test_an_answer_given_before_the_run_has_paused_waits_for_the_pause(prefect_harness: PrefectServer,
                                                                       tmp_path: Path) -> None:
    """The request is stored just before the run pauses: `campaign approve` in between must reach the run (it once
    failed with Prefect's NotPausedError and left the run waiting for an answer already given)."""
    import time

    from prefect import flow
    from prefect.flow_runs import pause_flow_run
    from prefect.runtime import flow_run

    from flows.approval import ApprovalInput, _wait_until_paused, approve_from_cli
    from pipeline.dispatch.approvals import open_request

    db = str(tmp_path / "campaigns.sqlite")
    with store.connect(db):
        pass  # the schema, before the flow writes its request

    @flow
    def asks_late() -> str:
        with store.connect(db) as shared:
            open_request(shared, "late", f"{flow_run.id}:1", flow_run_id=str(flow_run.id), origin="manual",
                         requested_by="alice", estimate_usd=0.0, timeout_s=60)
        time.sleep(2)  # the gap, widened: the request is visible, the run not yet paused
        answer = pause_flow_run(wait_for_input=ApprovalInput, timeout=60, key="approval-1", poll_interval=1)
        return f"{answer.decision} by {answer.name}"

    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(asks_late)
        waiting = wait_for(lambda: _pending(db, "late"), timeout_s=60, what="the late request", every_s=0.05)
        assert "sent to flow run" in approve_from_cli("late", db, name="bob", comment="", reject=False)
        assert run.result(timeout=60) == "approve by bob"
    with pytest.raises(LookupError, match="ended"):  # a run that is over is not waited for
        _wait_until_paused(waiting["flow_run_id"], 5)


def _pending(db: str, campaign_id: str) -> dict[str, Any] | None:
    with store.connect(db) as shared:
        return pending_request(shared, campaign_id)
