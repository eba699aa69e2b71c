"""A continuation (a run tagged `continuation`, as flows/continuation.py schedules it) due while the run before it
still holds the campaign's lease waits for the lease instead of being refused, up to
CAMPAIGN_CONTINUATION_LEASE_WAIT_S; kept out longer, it fails saying how long it waited and sends nothing; any
other run is still refused at once. The campaign flow runs on the session's Prefect server against the sandbox;
the earlier run's lease is held by this test, as that run would hold it."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline import store
from pipeline.dispatch.locks import CampaignLocked, campaign_lock
from pipeline.sandbox.whatsapp import SandboxConfig, create_app
from pipeline.servers import serve_in_thread
from tests.helpers.prefect import PrefectServer, run_logs
from tests.helpers.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
NUMBERS = [f"+44740012330{i}" for i in range(5)]


def _spec(tmp: Path) -> Path:
    audience = tmp / "cont.csv"
    audience.write_text("phone,first_name,city,coupon,opt_in\n" + "".join(
        f"{n},Ann,Leeds,W-{i},yes\n" for i, n in enumerate(NUMBERS)))
    data = yaml.safe_load((ROOT / "campaigns/welcome.yaml").read_text())
    data.update(name="cont", audience=str(audience), receipts_wait_s=0, approval={"required": False})
    spec = tmp / "cont.yaml"
    spec.write_text(yaml.safe_dump(data))
    return spec


def _run(tmp: Path, url: str, *tags: str) -> Any:
    from prefect import tags as prefect_tags

    from flows.campaign import campaign_flow

    with prefect_tags(*tags):
        return campaign_flow(str(_spec(tmp)), database=str(tmp / "campaigns.sqlite"), spool_dir=str(tmp / "spool"),
                             reports_dir=str(tmp / "reports"), provider_base_url=url, return_state=True)


def _waiting_run(api: Any) -> str | None:
    runs = api.post("/flow_runs/filter", json={"flow_runs": {"tags": {"all_": ["continuation"]},
                                                             "state": {"type": {"any_": ["RUNNING"]}}}}).json()
    for run in runs:
        if any("this continuation waits for it" in e["message"] for e in run_logs(api, run["id"])):
            return run["id"]
    return None


def test_a_continuation_waits_for_the_lease_then_sends(prefect_harness: PrefectServer, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAMPAIGN_CONTINUATION_LEASE_WAIT_S", "120")
    app = create_app(SandboxConfig(access_token="test-token", app_secret="test-app-secret",
                                   templates={"welcome_offer": "marketing"}))
    with serve_in_thread(app) as url, ThreadPoolExecutor(1) as pool, prefect_harness.client() as api, \
            store.connect(tmp_path / "campaigns.sqlite") as db:
        with campaign_lock(db, "cont", flow_run_id="the-run-before", flow_run_name="cont-first", ttl_s=5):
            running = pool.submit(_run, tmp_path, url, "continuation")
            run_id = wait_for(lambda: _waiting_run(api), timeout_s=120, what="the continuation to wait for the lease",
                              every_s=0.5)
            assert app.state.sandbox.accepted == 0 and not running.done()
        state = running.result(timeout=180)  # the lease is free: it goes on
    assert state.is_completed(), state.message
    assert str(state.state_details.flow_run_id) == run_id
    assert app.state.sandbox.accepted == len(NUMBERS)


def test_a_continuation_kept_out_longer_than_the_bound_fails_and_sends_nothing(
    prefect_harness: PrefectServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAMPAIGN_CONTINUATION_LEASE_WAIT_S", "3")
    app = create_app(SandboxConfig(access_token="test-token", app_secret="test-app-secret",
                                   templates={"welcome_offer": "marketing"}))
    with serve_in_thread(app) as url, store.connect(tmp_path / "campaigns.sqlite") as db, \
            campaign_lock(db, "cont", flow_run_id="the-run-before", flow_run_name="cont-first", ttl_s=5):
        started = time.monotonic()
        waited = _run(tmp_path, url, "continuation")
        took = time.monotonic() - started
        refused = _run(tmp_path, url)  # not a continuation: refused at once
    assert waited.is_failed() and "after waiting 3 s for it" in waited.message and "cont-first" in waited.message
    assert took >= 3
    with pytest.raises(CampaignLocked, match="is already running: flow run 'cont-first'"):
        refused.result()
    assert "after waiting" not in refused.message
    assert app.state.sandbox.accepted == 0


def test_the_bound_is_a_whole_number_of_seconds(prefect_harness: PrefectServer,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect import flow, tags

    from flows.continuation import lease_wait_s
    from pipeline.spec import SpecError

    @flow
    def probe() -> float:
        return lease_wait_s()

    assert probe() == 0.0  # not a continuation: no wait
    with tags("continuation"):
        monkeypatch.delenv("CAMPAIGN_CONTINUATION_LEASE_WAIT_S", raising=False)
        assert probe() == 600.0
        monkeypatch.setenv("CAMPAIGN_CONTINUATION_LEASE_WAIT_S", "abc")
        with pytest.raises(SpecError, match="CAMPAIGN_CONTINUATION_LEASE_WAIT_S: 'abc' is not a whole number"):
            probe()
