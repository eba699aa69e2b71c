"""The campaign flow's `template check` task, through real flow runs against the WhatsApp sandbox on loopback: a
template the registry does not have APPROVED stops the run before anything is prepared or sent, naming the template
and why; once APPROVED, the same spec runs and every recipient gets one message (the sandbox's count)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from pipeline import store
from pipeline.sandbox.whatsapp import SandboxConfig, create_app
from pipeline.sandbox.whatsapp_templates import SandboxNumber, SandboxTemplate
from pipeline.servers import serve_in_thread
from tests.helpers.prefect import PrefectServer

ROOT = Path(__file__).resolve().parents[2]
WABA, SENDER, ROWS = "102290129340398", "106540352242922", 30
WELCOME = SandboxTemplate(name="welcome_offer", components=[
    {"type": "BODY", "text": "Hi {{1}}, welcome to Acme! Show code {{2}} in our {{3}} store for 10% off."},
    {"type": "BUTTONS", "buttons": [{"type": "QUICK_REPLY", "text": "Stop promotions"}]}])


def _spec(tmp_path: Path) -> Path:
    audience = tmp_path / "audience.csv"
    rows = [f"+4474009{i:05d},Ann,Leeds,W-{i},yes" for i in range(ROWS)]
    audience.write_text("phone,first_name,city,coupon,opt_in\n" + "\n".join(rows) + "\n")
    data = yaml.safe_load((ROOT / "campaigns/welcome.yaml").read_text())
    data.update(name="checked", audience=str(audience), receipts_wait_s=0,
                rate_limit={"max_per_second": 200, "concurrency": 4})
    data["provider"] = {**data["provider"], "options": {"waba_id": WABA}}
    path = tmp_path / "checked.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _run(spec: Path, tmp_path: Path, url: str) -> Any:
    from flows.campaign import campaign_flow

    return campaign_flow(str(spec), database=str(tmp_path / "campaigns.sqlite"), spool_dir=str(tmp_path / "spool"),
                         reports_dir=str(tmp_path / "reports"), provider_base_url=url, return_state=True)


@pytest.mark.parametrize("status", ["REJECTED", "PAUSED", "PENDING"])
def test_a_template_not_approved_stops_the_flow_run_naming_it_then_approved_it_runs(
        prefect_harness: PrefectServer, tmp_path: Path, status: str) -> None:
    spec = _spec(tmp_path)
    config = SandboxConfig(access_token="test-token", app_secret="test-app-secret", fail_rate=0.0,
                           template_set=[WELCOME.model_copy(update={"status": status})],
                           phone_numbers=[SandboxNumber(id=SENDER)])
    app = create_app(config)
    sandbox = app.state.sandbox
    with serve_in_thread(app) as url:
        refused = _run(spec, tmp_path, url)
        assert refused.is_failed(), refused
        with pytest.raises(Exception, match=rf"template_not_approved: welcome_offer \[en_US\] is {status}"):
            refused.result()
        assert sandbox.accepted == 0  # nothing was sent
        with store.connect(str(tmp_path / "campaigns.sqlite")) as db:  # nor prepared or queued
            assert db.scalar("SELECT count(*) FROM outbox") == 0
        with httpx.Client(base_url=url, trust_env=False) as client:  # the provider approves it (no webhook URL:
            client.post("/_sandbox/templates/welcome_offer", json={"status": "APPROVED"})  # the flow's sync sees it)
        done = _run(spec, tmp_path, url)
        assert done.is_completed(), done
    assert done.result()["dispatch"]["sent"] == ROWS
    assert sandbox.accepted == ROWS and sandbox.duplicate_callback_data == 0
