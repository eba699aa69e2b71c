"""The upload page driven in headless Chromium (Debian's `chromium`, `make browser`) from the token to the end of
the campaign it starts: a Prefect server, the inbox watcher and campaign deployments served by `prefect.serve`,
`campaign upload-server` (the webhook receiver with the upload page) and the WhatsApp sandbox, all on loopback.

The browser fills in the token, picks a spec, attaches a CSV (DOM.setFileInputFiles), reads the check (rejects by
reason, the first rejects masked, the estimate), clicks "Start campaign" and follows the status the page keeps
refreshing until the campaign's flow run is Completed; the run, the ledger and the report then agree with the
sandbox, and the run's link opens it in the Prefect UI.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from pipeline import store
from pipeline.sandbox.whatsapp import SandboxConfig, create_app
from pipeline.servers import serve_in_thread
from tests.helpers import background
from tests.helpers.browser import Tab
from tests.helpers.prefect import SERVER_START_S, PrefectServer, deployment, scratch
from tests.helpers.processes import Processes, free_port
from tests.helpers.waiting import Deadline

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "browser-test-upload-token-0123456789"
ROWS = 40
FINAL = {"Completed", "Failed", "Crashed", "Cancelled"}

# The two deployments the page relies on, as prefect.yaml names them, with this test's folders and the sandbox.
SERVE = """
import json, sys
from flows.serve import load_flow, serve

params = json.loads(sys.argv[1])
watcher = load_flow("flows/watcher.py:inbox_watcher_flow").to_deployment(name="audience-inbox", parameters=params)
campaign = load_flow("flows/campaign.py:campaign_flow").to_deployment(name="inbox-campaign")
serve(watcher, campaign)
"""


SETUP_S = 180  # the served deployments, the upload server and the sandbox, up and answering, at most


def _stack(stack: ExitStack) -> dict[str, Any]:
    """The processes the page relies on, against the session's UI server, brought up in the background from the
    start of the session; bounded by SETUP_S on its own (the test's timeout counts its body only)."""
    server: PrefectServer = background.result("prefect_ui_server", SERVER_START_S)
    deadline = Deadline(SETUP_S, "the upload page's stack")
    tmp = scratch(stack, "upload-browser")
    specs, spool = tmp / "campaigns", tmp / "spool"
    specs.mkdir()
    spool.mkdir()
    welcome = yaml.safe_load((ROOT / "campaigns/welcome.yaml").read_text())
    # Followed to its end without an approval (uploads wait for one by default: tests/flows/test_approval_ui.py).
    welcome.update(receipts_wait_s=20, rate_limit={"max_per_second": 200, "concurrency": 4},
                   approval={"required": False})
    (specs / "welcome.yaml").write_text(yaml.safe_dump(welcome))
    (specs / "inbox-default.yaml").write_text((ROOT / "campaigns/inbox-default.yaml").read_text())
    port = free_port()
    procs = Processes(tmp / "logs")
    stack.callback(procs.stop_all)
    stack_server = PrefectServer(server.url, server.env, procs)  # waits show these processes' logs
    sandbox_config = SandboxConfig(
        access_token="test-token", app_secret="test-app-secret", templates={"welcome_offer": "marketing"},
        webhook_url=f"http://127.0.0.1:{port}/webhooks/whatsapp", seed=3, webhook_delay_s=(0.01, 0.03))
    sandbox = stack.enter_context(serve_in_thread(create_app(sandbox_config)))
    params = {"audiences_dir": str(tmp / "audiences"), "database": str(tmp / "campaigns.sqlite"),
              "spool_dir": str(spool), "reports_dir": str(tmp / "reports"), "provider_base_url": sandbox,
              "campaign_deployment": "campaign/inbox-campaign"}
    procs.start("serve", [sys.executable, "-c", SERVE, json.dumps(params)], env=server.env, cwd=tmp)
    procs.start("upload-server", [
        str(Path(sys.executable).parent / "campaign"), "upload-server", "--port", str(port),
        "--spool-dir", str(spool), "--specs-dir", str(specs), "--audiences-dir", str(tmp / "audiences"),
        "--staging-dir", str(tmp / "staging"),
    ], env={**server.env, "UPLOAD_TOKEN": TOKEN, "UPLOAD_MAX_MB": "5"}, cwd=tmp)
    page = f"http://127.0.0.1:{port}/upload"
    stack_server.wait_for(lambda: _answers(page), timeout_s=deadline.left("the upload page", 60),
                          what="the upload page", every_s=0.2)
    with server.client() as api:
        served = ["inbox-watcher/audience-inbox", "campaign/inbox-campaign"]
        stack_server.wait_for(lambda: all(deployment(api, name) for name in served),
                              timeout_s=deadline.left("the served deployments", 60), what=f"{served} served")
    return {"server": stack_server, "page": page, "sandbox": sandbox, "tmp": tmp}


background.register("upload_stack", _stack)


@pytest.fixture(scope="module")
def upload_stack() -> Iterator[dict[str, Any]]:
    yield background.result("upload_stack", SERVER_START_S + SETUP_S)
    background.close("upload_stack")


@pytest.fixture(scope="module")
def stack(upload_stack: dict[str, Any]) -> dict[str, Any]:
    return upload_stack


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _text_of(tab: Tab, selector: str) -> str:
    return tab.evaluate(f"(document.querySelector({json.dumps(selector)}) || {{}}).innerText || ''")


def _showing(tab: Tab, *expected: str, timeout_s: float, server: PrefectServer) -> str:
    def shown() -> str | None:
        text = tab.text()
        return text if all(s in text for s in expected) else None

    return server.wait_for(shown, timeout_s=timeout_s, what=f"{expected} on the upload page", every_s=0.2)


@pytest.mark.timeout(300, func_only=True)  # the stack's set-up has its own deadline
def test_upload_check_start_and_follow_the_run_to_its_end(stack: dict[str, Any], tab: Tab, tmp_path: Path):
    server: PrefectServer = stack["server"]
    lines = (ROOT / "audiences/sample.csv").read_text().splitlines()
    audience = tmp_path / "spring list.csv"
    audience.write_text("\n".join(lines[: ROWS + 1]) + "\n")
    tab.open(stack["page"], "Upload an audience", "Campaign spec")
    tab.evaluate(f"document.querySelector('#token').value = {json.dumps(TOKEN)};"
                 "document.querySelector('#uploaded-by').value = 'Uma Uploader';"
                 "document.querySelector('#spec').value = 'welcome.yaml'")
    root = tab.call("DOM.getDocument")["root"]["nodeId"]
    file_input = tab.call("DOM.querySelector", nodeId=root, selector="#file")["nodeId"]
    tab.call("DOM.setFileInputFiles", nodeId=file_input, files=[str(audience)])
    tab.evaluate("document.querySelector('#check').click()")

    # The check: counts by reason, the first rejects (masked), the estimate, and the button to start.
    _showing(tab, "Rejected rows by reason", "Cost estimate", "Start campaign", timeout_s=60, server=server)
    assert "spring-list.csv with spec welcome.yaml" in _text_of(tab, "#summary")
    totals = _text_of(tab, "#totals").split()
    assert totals[-3:] == [str(ROWS), "35", "5"]  # rows read, accepted, rejected
    counts = _text_of(tab, "#reject-counts")
    assert "no_opt_in\t3" in counts and "blocked_country\t1" in counts
    first = _text_of(tab, "#first-rejects")
    assert "+91*******397" in first and "81234 36397" not in tab.evaluate("document.body.innerHTML")
    estimate = _text_of(tab, "#estimate")
    assert "messages\t35" in estimate and "total (USD)" in estimate

    # Start: the page follows the watcher's run, then the campaign's, refreshing itself until the end.
    tab.evaluate("document.querySelector('#start').click()")
    _showing(tab, "Handed to the drop folder", "Watcher run", timeout_s=30, server=server)
    final = server.wait_for(lambda: (state := _text_of(tab, "#campaign-run-state")) in FINAL and state,
                            timeout_s=150, what="the campaign run to end")
    assert final == "Completed", tab.evaluate("document.body.innerText")
    campaign_id = _text_of(tab, "#campaign-id")
    assert _text_of(tab, "#outcome") == "started" and campaign_id.startswith("spring-list-")
    link = tab.evaluate("document.querySelector('#campaign-run a').href")
    assert link.startswith(f"{server.url}/runs/flow-run/")
    run_id = link.rsplit("/", 1)[1]

    # The run through the Prefect API: the campaign deployment's run of this upload, completed.
    with server.client() as api:
        run = api.get(f"/flow_runs/{run_id}").json()
        served_by = api.get(f"/deployments/{run['deployment_id']}").json()
    assert run["state_type"] == "COMPLETED" and run["name"] == campaign_id
    assert served_by["name"] == "inbox-campaign" and run["parameters"]["campaign_id"] == campaign_id

    # What was sent: the ledger, the sandbox and the report agree.
    accepted = httpx.get(f"{stack['sandbox']}/_sandbox/stats?messages=0").json()["accepted"]
    with store.connect(stack["tmp"] / "campaigns.sqlite") as shared:
        sent = shared.scalar("SELECT count(*) FROM outbox WHERE campaign_id = :c AND state = 'sent'", c=campaign_id)
    assert sent == accepted > 0
    assert (stack["tmp"] / "reports" / campaign_id / "report.html").exists()

    # And the link on the page opens the run in the Prefect UI.
    tab.open(link, campaign_id, "Completed")
