"""A send window that closes with messages queued: the run says when the campaign continues, a run of the same
deployment is scheduled at the next opening (flows/continuation.py), and whatever serves the deployment starts it
then, with nobody acting: every message reaches the sandbox once, none outside a slot of the window.

The deployment is served by a real `serve` process against the session's Prefect server; the sandbox runs in this
process on loopback; the store is a SQLite file both processes share."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from pipeline import store
from pipeline.sandbox.whatsapp import SandboxConfig, create_app
from pipeline.servers import serve_in_thread
from tests.helpers.prefect import FINAL, PrefectServer, deployment, run_deployment

ROOT = Path(__file__).resolve().parents[2]
MESSAGES, RATE = 60, 2.0  # 30 s of sending: the first slot closes while it sends


def _spec(tmp: Path, slots: list[dict[str, str]]) -> Path:
    audience = tmp / "window.csv"
    rows = [f"+4474001{i:05d},Ann,Leeds,W-{i},yes" for i in range(MESSAGES)]
    audience.write_text("phone,first_name,city,coupon,opt_in\n" + "\n".join(rows) + "\n")
    data = yaml.safe_load((ROOT / "campaigns/welcome.yaml").read_text())
    data.update(name="window", audience=str(audience), receipts_wait_s=0,
                rate_limit={"max_per_second": RATE, "concurrency": 2}, send_window={"slots": slots})
    spec = tmp / "window.yaml"
    spec.write_text(yaml.safe_dump(data))
    return spec


def test_queued_at_the_close_are_sent_after_the_next_opening_by_a_scheduled_run(
    prefect_harness: PrefectServer, tmp_path: Path
) -> None:
    server = prefect_harness
    script = ("from flows.serve import load_flow, serve\n"
              "serve(load_flow('flows/campaign.py:campaign_flow').to_deployment(name='window-test'))\n")
    serving = server.procs.start("serve-window-test", [sys.executable, "-c", script], env=server.env, cwd=tmp_path)
    db = tmp_path / "campaigns.sqlite"
    config = SandboxConfig(access_token="test-token", app_secret="test-app-secret",
                           templates={"welcome_offer": "marketing"})
    app = create_app(config)
    try:
        with server.client() as api, serve_in_thread(app) as url:
            found = server.wait_for(lambda: deployment(api, "campaign/window-test"), timeout_s=90,
                                    what="the served test deployment")
            # Open now (the run needs a few seconds to start), closed for 6 s, open again.
            now = datetime.now(UTC)
            close, reopen = now + timedelta(seconds=30), now + timedelta(seconds=36)
            slots = [{"start": (now - timedelta(minutes=1)).isoformat(), "end": close.isoformat()},
                     {"start": reopen.isoformat(), "end": (reopen + timedelta(minutes=10)).isoformat()}]
            spec = _spec(tmp_path, slots)
            first = run_deployment(api, "campaign/window-test", {
                "spec_path": str(spec), "database": str(db), "spool_dir": str(tmp_path / "spool"),
                "reports_dir": str(tmp_path / "reports"), "provider_base_url": url})

            def runs() -> list[dict[str, Any]]:
                return api.post("/flow_runs/filter", json={
                    "deployments": {"id": {"any_": [found["id"]]}}, "sort": "EXPECTED_START_TIME_ASC"}).json()

            def all_done() -> list[dict[str, Any]] | None:
                got = runs()
                finished = [r for r in got if r["state_type"] in FINAL]
                return got if len(finished) >= 2 and len(finished) == len(got) and \
                    app.state.sandbox.accepted >= MESSAGES else None

            done = server.wait_for(all_done, timeout_s=180, what="the first run and its continuation to finish",
                                   details=lambda: str([(r["name"], r["state_name"]) for r in runs()]))
    finally:
        server.procs.stop(serving)
    assert [r["state_type"] for r in done] == ["COMPLETED"] * len(done), [r["state"] for r in done]
    assert done[0]["id"] == first
    # The continuation was scheduled by the first run for the window's next opening, and started by itself.
    second = done[1]
    assert datetime.fromisoformat(second["expected_start_time"]) == reopen
    assert "continuation" in second["tags"]
    assert done[0]["parameters"].items() <= second["parameters"].items()  # the same, with the defaults filled in
    with store.connect(db) as shared:
        rows = shared.rows("SELECT state, sent_at FROM outbox WHERE campaign_id = 'window'")
    sent = [store.utc(at) for state, at in rows if state == "sent"]
    assert len(rows) == len(sent) == MESSAGES
    # Some before the close, the rest after the opening; none in between (sent_at is recorded when the answer
    # came, so a send that left just before the close may be recorded a moment after it).
    before, after = [t for t in sent if t < reopen], [t for t in sent if t >= reopen]
    assert before and after and max(before) < close + timedelta(seconds=2)
    # Each message exactly once at the provider.
    assert app.state.sandbox.accepted == MESSAGES and app.state.sandbox.duplicate_callback_data == 0
