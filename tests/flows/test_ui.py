"""A campaign run against `prefect server start` shows in the Prefect UI: its parameters, one task run per stage,
the progress, reject, cost and summary artifacts, progress logs with no phone number or e-mail address in them.

The campaign runs in a subprocess (the flow against the sandbox and the receiver, as in test_e2e.py) with
PREFECT_API_URL pointing at the test's server; the UI is opened in headless Chromium over the DevTools protocol,
and the same facts are checked through the REST API.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import background
from tests.helpers.browser import Tab
from tests.helpers.prefect import SERVER_START_S, PrefectServer, run_logs, scratch
from tests.helpers.waiting import Deadline, wait_for

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
STAGES = ["template check", "prepare", "queue", "estimate", "frequency cap", "dispatch", "receipts", "report"]
ARTIFACTS = {"welcome-rejects": "table", "welcome-costs": "table", "welcome-summary": "markdown",
             "welcome-progress": "progress"}
PHONE, EMAIL = "+447700900123", "jane.doe@example.com"

CAMPAIGN = r'''
import json, logging, sys
from pathlib import Path

import yaml
from prefect import flow, get_run_logger

from flows.campaign import campaign_flow
from flows.logging_mask import install_log_masking
from pipeline.receipts.receiver import create_receiver_app, secrets_from_env
from pipeline.sandbox.whatsapp import SandboxConfig, create_app
from pipeline.servers import serve_in_thread

root, tmp, rows = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
audience = tmp / "audience.csv"
lines = (root / "audiences/sample.csv").read_text().splitlines()
audience.write_text("\n".join(lines[: rows + 1]) + "\n")
data = yaml.safe_load((root / "campaigns/welcome.yaml").read_text())
# 100 messages/s: the dispatch lasts a few seconds, so its progress is reported more than once.
data.update(audience=str(audience), receipts_wait_s=30, rate_limit={"max_per_second": 100, "concurrency": 8})
spec = tmp / "welcome.yaml"
spec.write_text(yaml.safe_dump(data))
spool = tmp / "spool"
spool.mkdir()


@flow(name="log-masking-check")
def log_masking_check(phone: str, email: str) -> None:
    install_log_masking()
    get_run_logger().info("run logger: sending to %s and %s", phone, email)
    logging.getLogger("pipeline.check").warning("library logger: %s failed, tell %s", phone, email)


with serve_in_thread(create_receiver_app(spool, secrets_from_env())) as receiver:
    config = SandboxConfig(access_token="test-token", app_secret="test-app-secret",
                           webhook_url=f"{receiver}/webhooks/whatsapp", templates={"welcome_offer": "marketing"},
                           seed=11, webhook_delay_s=(0.01, 0.05))
    with serve_in_thread(create_app(config)) as sandbox:
        state = campaign_flow(str(spec), database=str(tmp / "campaigns.sqlite"), spool_dir=str(spool),
                              reports_dir=str(tmp / "reports"), provider_base_url=sandbox, return_state=True)
check = log_masking_check(sys.argv[4], sys.argv[5], return_state=True)
# The daily cost report of the day the campaign was sent (the deployment runs it for yesterday).
from datetime import UTC, datetime
from flows.report import daily_report_flow
daily = daily_report_flow(day=datetime.now(UTC).date().isoformat(), database=str(tmp / "campaigns.sqlite"),
                          reports_dir=str(tmp / "reports"), return_state=True)
print(json.dumps({"flow_run_id": str(state.state_details.flow_run_id), "state": state.type.value,
                  "summary": state.result() if state.is_completed() else None,
                  "check_run_id": str(check.state_details.flow_run_id),
                  "daily_run_id": str(daily.state_details.flow_run_id), "daily_state": daily.type.value,
                  "daily": daily.result() if daily.is_completed() else daily.message}, default=str))
'''


SETUP_S = 240  # the campaign the tests look at, run against the server, at most


@pytest.fixture(scope="module")
def server(prefect_ui_server: PrefectServer) -> PrefectServer:
    return prefect_ui_server


def _ui_campaign(stack: ExitStack) -> dict[str, Any]:
    """The campaign (and the two small flows) every test here looks at, run once in a subprocess against the UI
    server, in the background from the start of the session; bounded by SETUP_S on its own, as the tests' timeout
    counts their bodies only."""
    server: PrefectServer = background.result("prefect_ui_server", SERVER_START_S)
    deadline = Deadline(SETUP_S, "the UI test's campaign")
    tmp = scratch(stack, "ui-campaign")
    env = {**server.env, "PREFECT_LOGGING_EXTRA_LOGGERS": "pipeline"}
    try:
        done = subprocess.run([sys.executable, "-c", CAMPAIGN, str(ROOT), str(tmp), "400", PHONE, EMAIL], env=env,
                              cwd=tmp, capture_output=True, text=True, timeout=deadline.left("the campaign run"))
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the UI test's campaign did not finish within its {SETUP_S} s set-up deadline\n"
                             f"{(exc.stderr or '')[-5000:]}") from None
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["state"] == "COMPLETED", done.stderr[-5000:]
    return {**result, "console": done.stdout + done.stderr, "tmp": tmp}


background.register("ui_campaign", _ui_campaign)


@pytest.fixture(scope="module")
def ui_campaign() -> dict[str, Any]:
    return background.result("ui_campaign", SERVER_START_S + SETUP_S)


@pytest.fixture(scope="module")
def campaign(server: PrefectServer, ui_campaign: dict[str, Any]) -> dict[str, Any]:
    return ui_campaign


def _no_contact_details(text: str) -> bool:
    # Run ids and times aside, no run of 8+ digits (a phone number) and no full e-mail address.
    text = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "", text)
    return not re.search(r"\d[\d\s]{7,}\d", text) and EMAIL not in text


@pytest.mark.timeout(300, func_only=True)  # the campaign's set-up has its own deadline
def test_the_run_its_task_runs_and_artifacts_through_the_api(server: PrefectServer, campaign: dict[str, Any]):
    run_id = campaign["flow_run_id"]
    with server.client() as api:
        run = api.get(f"/flow_runs/{run_id}").json()
        tasks = api.post("/task_runs/filter", json={"flow_runs": {"id": {"any_": [run_id]}}}).json()
        artifacts = api.post("/artifacts/filter", json={"flow_runs": {"id": {"any_": [run_id]}}}).json()
        logs = wait_for(lambda: (found := run_logs(api, run_id)) and any(
            "Finished in state Completed" in entry["message"] and entry["task_run_id"] is None for entry in found)
            and found, timeout_s=30, what="the run's logs", every_s=0.5)
    assert run["state_type"] == "COMPLETED" and run["parameters"]["spec_path"].endswith("welcome.yaml")
    assert run["parameters"]["provider_base_url"].startswith("http://127.0.0.1:")
    # One task run per stage: tens, never one per message.
    assert sorted(t["name"].rsplit("-", 1)[0] for t in tasks) == sorted(STAGES)
    assert {t["state_type"] for t in tasks} == {"COMPLETED"}
    by_key = {a["key"]: a for a in artifacts}
    assert {k: by_key[k]["type"] for k in ARTIFACTS if k in by_key} == ARTIFACTS
    assert by_key["welcome-progress"]["data"] == 100.0
    assert "sent" in by_key["welcome-progress"]["description"]
    assert "report.html" in by_key["welcome-summary"]["data"]  # the link to the HTML report
    assert {row["reason"] for row in json.loads(by_key["welcome-rejects"]["data"])} >= {"invalid_number"}
    assert json.loads(by_key["welcome-costs"]["data"])  # one row per channel x country x category
    # Progress in the logs, never a line per message: 400 rows make a few dozen lines at most.
    messages = [entry["message"] for entry in logs]
    assert any(m.startswith("dispatch: ") and " sent, " in m for m in messages)
    assert len(messages) < 40 < campaign["summary"]["sent"]
    assert all(_no_contact_details(m) for m in messages), messages


@pytest.mark.timeout(300, func_only=True)  # the campaign's set-up has its own deadline
def test_logs_mask_phone_numbers_and_email_addresses(server: PrefectServer, campaign: dict[str, Any]):
    with server.client() as api:
        logs = wait_for(lambda: (found := run_logs(api, campaign["check_run_id"])) and len(
            [e for e in found if "logger:" in e["message"]]) == 2 and found, timeout_s=30, what="the check's logs",
            every_s=0.5)
    lines = [entry["message"] for entry in logs if "logger:" in entry["message"]]
    assert sorted(lines) == [
        "library logger: +44*******123 failed, tell j***@example.com",
        "run logger: sending to +44*******123 and j***@example.com",
    ]
    # The console copy is masked too, and the run's own "View at" link keeps its address and id.
    assert PHONE not in campaign["console"] and EMAIL not in campaign["console"]
    assert f"/runs/flow-run/{campaign['flow_run_id']}" in campaign["console"]


@pytest.mark.timeout(300, func_only=True)  # the campaign's set-up has its own deadline
def test_the_ui_shows_the_run_its_task_runs_and_artifacts(
    server: PrefectServer, campaign: dict[str, Any], tab: Tab, tmp_path: Path
):
    run_id = campaign["flow_run_id"]
    with server.client() as api:
        run = api.get(f"/flow_runs/{run_id}").json()
        task_names = [t["name"] for t in api.post(
            "/task_runs/filter", json={"flow_runs": {"id": {"any_": [run_id]}}}).json()]
        [summary_id] = [a["id"] for a in api.post("/artifacts/filter", json={
            "flow_runs": {"id": {"any_": [run_id]}}, "artifacts": {"key": {"any_": ["welcome-summary"]}}}).json()]
    page = f"{server.url}/runs/flow-run/{run_id}"

    # The run page: its name, state, flow and the progress lines of its logs.
    tab.open(page, run["name"], "Completed", "campaign", f"{len(STAGES)} Task runs", "dispatch: ")
    shot = tmp_path / "prefect-run.png"
    tab.screenshot(shot)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("UPDATE_DOCS_SCREENSHOT"):
        shutil.copyfile(shot, ROOT / "docs" / "prefect-run.png")

    tab.open(page, *task_names, tab="Task Runs")
    tab.open(page, *ARTIFACTS, "Rejected rows by reason", tab="Artifacts", scroll=True)
    tab.open(page, "spec_path", "welcome.yaml", "provider_base_url", tab="Parameters")
    # The summary artifact, rendered, links to the HTML report.
    tab.open(f"{server.url}/artifacts/artifact/{summary_id}", "Campaign summary", "HTML report: ")
    links = tab.evaluate("[...document.querySelectorAll('a')].map(a => a.href)")
    assert any(link.startswith("file://") and link.endswith("/report.html") for link in links), links


@pytest.mark.timeout(300, func_only=True)  # the campaign's set-up has its own deadline
def test_the_daily_cost_report_covers_the_campaigns_sent_that_day(server: PrefectServer, campaign: dict[str, Any]):
    assert campaign["daily_state"] == "COMPLETED", campaign["daily"]
    daily = campaign["daily"]
    [row] = daily["campaigns"]
    assert row["campaign_id"] == "welcome" and row["sent"] == campaign["summary"]["sent"]
    assert Path(row["report_html"]).exists() and Path(daily["bill"]["html"]).exists()
    assert Path(daily["bill"]["html"]).parent == campaign["tmp"] / "reports" / "_daily" / daily["day"]
    with server.client() as api:
        artifacts = api.post("/artifacts/filter", json={
            "flow_runs": {"id": {"any_": [campaign["daily_run_id"]]}}}).json()
    by_key = {a["key"]: a for a in artifacts}
    assert set(by_key) == {f"daily-costs-{daily['day']}", f"daily-report-{daily['day']}"}
    assert [r["campaign_id"] for r in json.loads(by_key[f"daily-costs-{daily['day']}"]["data"])] == ["welcome"]
    assert "report.html" in by_key[f"daily-report-{daily['day']}"]["data"]
