"""The approval form in the Prefect UI, driven in headless Chromium: a campaign that needs an approval waits after its
estimate (paused with Prefect's run input, flows/approval.py); its run page in the UI offers "Resume", whose form
shows the estimate, the rejects, a masked sample of the rendered messages and of the model-written values (the same
lines as the personalise artifact), and the decision, name and comment. Approving there starts the dispatch;
rejecting there sends nothing and fails the run with the reason. Prefect 3.9 has two UIs: V1 (the run page at
`/runs/flow-run/<id>`) and V2 (at `/v2/runs/flow-run/<id>`), the one its neutral entry point `/` leads to
(`server.ui.v2_enabled`, true by default); V2's run page offers the same form (its menu's "Resume": the description
as Markdown, then decision, name and comment), and approving there starts the dispatch too.

Each campaign runs in a subprocess against `prefect server start` (the session's UI server), with the WhatsApp
sandbox and the sandbox's OpenAI-compatible endpoint on loopback in that subprocess; it prints one JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pipeline import store
from pipeline.dispatch.approvals import history, pending_request
from tests.helpers.browser import Tab
from tests.helpers.prefect import PrefectServer
from tests.helpers.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
ROWS = 6

CAMPAIGN = r'''
import json, sys
from pathlib import Path

import yaml

from flows.campaign import campaign_flow
from pipeline.sandbox.llm import LlmSandboxConfig, create_llm_app
from pipeline.sandbox.whatsapp import SandboxConfig, create_app
from pipeline.servers import serve_in_thread

root, tmp, name, rows = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
audience = tmp / "audience.csv"
audience.write_text("phone,first_name,city,coupon,opt_in\n" + "".join(
    f"+4474001235{i:02d},Ann{i},Leeds,W-{i},yes\n" for i in range(rows)) + "not-a-number,Bo,Leeds,W-9,yes\n")
data = yaml.safe_load((root / "campaigns/welcome.yaml").read_text())
# One recipient's model answer carries a link: refused, it falls back to the fixed text (counted on the form).
llm_config = LlmSandboxConfig(api_key="ui-llm-key", answers={"Ann0 ": "Visit https://acme.example/deal"})
with serve_in_thread(create_llm_app(llm_config)) as llm, serve_in_thread(create_app(SandboxConfig(
        access_token="test-token", app_secret="test-app-secret", templates={"welcome_offer": "marketing"}))) as wa:
    data.update(name=name, audience=str(audience), receipts_wait_s=0,
                approval={"required": True, "approvers": ["bob"], "timeout_s": 600},
                generate={"variables": {"opener": {"prompt": "Write a one-line opener for {{ first_name }} .",
                                                   "fallback": "We have something for you", "max_chars": 60}},
                          "base_url": f"{llm}/v1", "api_key_env": "UI_TEST_LLM_KEY"})
    data["template"].update(text="{{ opener }}! Show code {{ code }} in our {{ city }} store.",
                            body=["{{ opener }}", "{{ code }}", "{{ city }}"])
    spec = tmp / f"{name}.yaml"
    spec.write_text(yaml.safe_dump(data))
    state = campaign_flow(str(spec), database=str(tmp / "campaigns.sqlite"), spool_dir=str(tmp / "spool"),
                          reports_dir=str(tmp / "reports"), provider_base_url=wa, started_by="alice",
                          return_state=True)
    import httpx
    accepted = httpx.get(f"{wa}/_sandbox/stats?messages=0").json()["accepted"]
print(json.dumps({"state": state.type.value, "message": state.message, "accepted": accepted,
                  "flow_run_id": str(state.state_details.flow_run_id)}))
'''


def _start(server: PrefectServer, tmp: Path, name: str) -> subprocess.Popen[str]:
    env = {**server.env, "UI_TEST_LLM_KEY": "ui-llm-key"}
    return subprocess.Popen([sys.executable, "-c", CAMPAIGN, str(ROOT), str(tmp), name, str(ROWS)], env=env, cwd=tmp,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _paused(server: PrefectServer, proc: subprocess.Popen[str], db: Path, name: str) -> dict[str, Any]:
    """The campaign's approval request, once its run is paused for it."""
    def waiting() -> dict[str, Any] | None:
        assert proc.poll() is None, proc.communicate()
        if not db.exists():
            return None
        with store.connect(db) as shared:
            asked = pending_request(shared, name)
        if asked is None:
            return None
        with server.client() as api:
            state = api.get(f"/flow_runs/{asked['flow_run_id']}").json()["state"]
        return asked if state["type"] == "PAUSED" else None

    return wait_for(waiting, timeout_s=180, what=f"campaign {name} to wait for its approval", every_s=0.5)


def _answer_in_the_ui(tab: Tab, server: PrefectServer, run_id: str, decision: str, name: str, comment: str) -> str:
    """Opens the run in the Prefect UI, opens its Resume form, fills it in and submits it; the form's text."""
    tab.open(f"{server.url}/runs/flow-run/{run_id}", "Paused", "Resume")
    tab.evaluate("[...document.querySelectorAll('button')].find(b => b.innerText.trim() === 'Resume').click()")

    def shown() -> str | None:
        text = tab.evaluate("(document.querySelector('.p-modal') || {}).innerText || ''")
        return text if all(s in text for s in ("Resume Flow Run", "Decision", "Name", "Comment", "Submit")) else None

    form = wait_for(shown, timeout_s=45, what="the Resume form", every_s=0.2)
    dialog = "document.querySelector('.p-modal')"
    # The decision is a native <select>; Vue's v-model listens for `change`.
    tab.evaluate(f"(() => {{ const s = {dialog}.querySelector('select'); s.value = {json.dumps(decision)};"
                 "s.dispatchEvent(new Event('change', {bubbles: true})); })()")
    for index, text in ((0, name), (1, comment)):  # typed, as a person types, into the two text areas
        tab.evaluate(f"{dialog}.querySelectorAll('textarea')[{index}].focus()")
        tab.call("Input.insertText", text=text)
    filled = tab.evaluate(f"(() => {{ const d = {dialog}; return [d.querySelector('select').value, "
                          "...[...d.querySelectorAll('textarea')].map(t => t.value)]; })()")
    assert filled == [decision, name, comment], filled
    submit = f"[...({dialog} || document).querySelectorAll('button')].find(b => b.innerText.trim() === 'Submit')"
    tab.evaluate(f"{submit}.click()")

    def resumed() -> bool:
        with server.client() as api:
            if api.get(f"/flow_runs/{run_id}").json()["state"]["type"] != "PAUSED":
                return True
        # Under load a click can land while the form re-renders: press Submit again while the form is still open.
        tab.evaluate(f"(() => {{ const b = {submit}; if (b && !b.disabled) b.click(); }})()")
        return False

    wait_for(resumed, timeout_s=60, what="the run to leave its pause after Submit", every_s=2.0,
             details=lambda: tab.evaluate(f"({dialog} || {{}}).innerText || 'no form open'"))
    return form


def _answer_in_the_v2_ui(tab: Tab, server: PrefectServer, run_id: str, decision: str, name: str, comment: str) -> str:
    """The same in the V2 UI: the run page's menu (⋮) offers Resume, whose dialog shows the description as Markdown
    above a form (the decision a combobox, name and comment text areas) submitted with its "Resume" button; the
    dialog's text."""
    tab.open(f"{server.url}/v2/runs/flow-run/{run_id}", "Paused", "Open menu")
    # Radix menus open on a pointer press, which a scripted click() does not send: the mouse, as a person clicks.
    tab.click("[...document.querySelectorAll('button[data-slot=dropdown-menu-trigger]')]"
              ".find(b => b.innerText.trim() === 'Open menu')")
    resume = "[...document.querySelectorAll('[role=menuitem]')].find(e => e.innerText.trim() === 'Resume')"
    wait_for(lambda: tab.evaluate(f"!!{resume}"), timeout_s=20, what="Resume in the run's menu", every_s=0.2)
    tab.click(resume)
    dialog = "document.querySelector('[role=dialog]')"

    def shown() -> str | None:  # the description is fetched after the form's schema: both shown
        text = tab.evaluate(f"({dialog} || {{}}).innerText || ''")
        return text if all(s in text for s in ("Resume Flow Run", "Provide input to resume", "Cost estimate",
                                               "Decision", "Name", "Comment", "Resume")) else None

    form = wait_for(shown, timeout_s=45, what="the V2 Resume dialog with its description", every_s=0.2,
                    details=lambda: tab.evaluate(f"({dialog} || {{}}).innerText || 'no dialog'"))
    # Markdown rendered, not shown as source: its headings are headings.
    headings = tab.evaluate(f"[...{dialog}.querySelectorAll('.prose h3')].map(h => h.innerText.trim())")
    assert headings[:2] == ["Cost estimate", "Rejects"] and "### " not in form, (headings, form[:2000])
    tab.click(f"{dialog}.querySelector('[aria-label=\"Select Decision\"]')")
    option = f"[...document.querySelectorAll('[role=option]')].find(o => o.innerText.trim() === {json.dumps(decision)})"
    wait_for(lambda: tab.evaluate(f"!!{option}"), timeout_s=10, what=f"the decision {decision!r}", every_s=0.2)
    tab.click(option)
    for index, text in ((0, name), (1, comment)):  # typed, as a person types, into the two text areas
        tab.evaluate(f"{dialog}.querySelectorAll('textarea')[{index}].focus()")
        tab.call("Input.insertText", text=text)
    filled = tab.evaluate(f"(() => {{ const d = {dialog}; return [d.querySelector('[aria-label=\"Select Decision\"]')"
                          ".innerText.trim(), ...[...d.querySelectorAll('textarea')].map(t => t.value)]; })()")
    assert filled == [decision, name, comment], filled
    tab.click(f"[...{dialog}.querySelectorAll('button')].find(b => b.innerText.trim() === 'Resume')")
    wait_for(lambda: "Flow run resumed" in tab.text(), timeout_s=30, what="V2's 'Flow run resumed'", every_s=0.2,
             details=tab.text)
    return form


def _shows_the_brief(server: PrefectServer, form: str, name: str) -> None:
    """What the approver saw above the form: the cost, the rejects, the rendered sample and the model's values."""
    assert f"{ROWS} messages, USD" in form and "invalid_number: 1" in form
    assert "+44*******500" in form and "+447400123500" not in form
    assert "Model-written values" in form and f"{ROWS - 1} written by the model, 1 fell back" in form
    assert "link: 1" in form
    with server.client() as api:
        [artifact] = api.post("/artifacts/filter", json={"artifacts": {"key": {"any_": [f"{name}-personalise"]}},
                                                         "sort": "CREATED_DESC", "limit": 1}).json()
    samples = [line.removeprefix("- ").replace("`", "") for line in artifact["data"].splitlines()
               if line.startswith("- `opener`")]
    assert samples and all(s in form for s in samples)  # the same masked lines as the artifact


def _finished(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-5000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.timeout(420)
def test_approving_in_the_ui_form_starts_the_dispatch(prefect_ui_server: PrefectServer, tab: Tab,
                                                      tmp_path: Path) -> None:
    server = prefect_ui_server
    proc = _start(server, tmp_path, "ui-approve")
    try:
        asked = _paused(server, proc, tmp_path / "campaigns.sqlite", "ui-approve")
        form = _answer_in_the_ui(tab, server, asked["flow_run_id"], "approve", "bob", "sample and cost checked")
        result = _finished(proc)
    finally:
        proc.kill()
    _shows_the_brief(server, form, "ui-approve")
    assert result["state"] == "COMPLETED", result["message"]
    assert result["accepted"] == ROWS
    with store.connect(tmp_path / "campaigns.sqlite") as shared:
        answered = history(shared, "ui-approve")
    assert [(h["decision"], h["approver"], h["comment"]) for h in answered] == [
        ("approved", "bob", "sample and cost checked")]


@pytest.mark.timeout(420)
def test_rejecting_in_the_ui_form_sends_nothing(prefect_ui_server: PrefectServer, tab: Tab, tmp_path: Path) -> None:
    server = prefect_ui_server
    proc = _start(server, tmp_path, "ui-reject")
    try:
        asked = _paused(server, proc, tmp_path / "campaigns.sqlite", "ui-reject")
        _answer_in_the_ui(tab, server, asked["flow_run_id"], "reject", "bob", "wrong audience")
        result = _finished(proc)
    finally:
        proc.kill()
    assert result["state"] == "FAILED" and "rejected by bob: wrong audience" in result["message"]
    assert result["accepted"] == 0
    with store.connect(tmp_path / "campaigns.sqlite") as shared:
        answered = history(shared, "ui-reject")
        queued = shared.scalar("SELECT count(*) FROM outbox WHERE state = 'queued'")
    assert [(h["decision"], h["approver"]) for h in answered] == [("rejected", "bob")] and queued == ROWS


@pytest.mark.timeout(420)
def test_approving_in_the_v2_ui_starts_the_dispatch(prefect_ui_server: PrefectServer, tab: Tab,
                                                    tmp_path: Path) -> None:
    server = prefect_ui_server
    # The UI an operator opening the server lands in (no saved choice in this browser): V2.
    tab.open(f"{server.url}/", "Dashboard")
    assert tab.evaluate("location.pathname").startswith("/v2/"), tab.evaluate("location.href")
    proc = _start(server, tmp_path, "ui-v2-approve")
    try:
        asked = _paused(server, proc, tmp_path / "campaigns.sqlite", "ui-v2-approve")
        form = _answer_in_the_v2_ui(tab, server, asked["flow_run_id"], "approve", "bob", "checked in the V2 UI")
        result = _finished(proc)
    finally:
        proc.kill()
    _shows_the_brief(server, form, "ui-v2-approve")
    assert result["state"] == "COMPLETED", result["message"]
    assert result["accepted"] == ROWS
    with store.connect(tmp_path / "campaigns.sqlite") as shared:
        answered = history(shared, "ui-v2-approve")
    assert [(h["decision"], h["approver"], h["comment"]) for h in answered] == [
        ("approved", "bob", "checked in the V2 UI")]
