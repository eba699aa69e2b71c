"""`campaign pause` before a run, then `campaign run` and `campaign resume` through the real flow, against the
WhatsApp sandbox on loopback: the paused run sends nothing (counted by the sandbox) and leaves everything queued; the
resume sends it all. (Once, lanes started before the flag's first read and sent for half a second: 192 messages
at the demo's 400/s.)"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml

from pipeline import store
from pipeline.cli import main
from pipeline.dispatch import operations
from pipeline.dispatch.outbox import register_campaign
from pipeline.receipts.receiver import create_receiver_app, secrets_from_env
from pipeline.sandbox.whatsapp import SandboxConfig, create_app
from pipeline.servers import serve_in_thread
from pipeline.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sandbox(tmp_path: Path, prefect_harness):
    spool = tmp_path / "spool"
    spool.mkdir()
    with serve_in_thread(create_receiver_app(spool, secrets_from_env())) as receiver_url:
        config = SandboxConfig(
            access_token="test-token", app_secret="test-app-secret", webhook_url=f"{receiver_url}/webhooks/whatsapp",
            templates={"welcome_offer": "marketing"}, seed=11, webhook_delay_s=(0.01, 0.05),
        )
        with serve_in_thread(create_app(config)) as sandbox_url:
            yield sandbox_url


def test_a_paused_campaign_sends_nothing_until_resumed(tmp_path: Path, sandbox: str, capsys):
    audience = tmp_path / "audience.csv"
    audience.write_text("\n".join((ROOT / "audiences/sample.csv").read_text().splitlines()[:41]) + "\n")
    data = yaml.safe_load((ROOT / "campaigns/welcome.yaml").read_text())
    data.update(audience=str(audience), receipts_wait_s=10, rate_limit={"max_per_second": 400, "concurrency": 16})
    spec = tmp_path / "welcome.yaml"
    spec.write_text(yaml.safe_dump(data))
    db = str(tmp_path / "campaigns.sqlite")
    with store.connect(db) as shared:
        register_campaign(shared, load_spec(spec), "welcome")  # known, never run: the pause holds its first run
    assert main(["pause", "welcome", "--db", db]) == 0
    assert "its next run sends nothing" in capsys.readouterr().out
    common = ["--db", db, "--spool-dir", str(tmp_path / "spool"), "--reports-dir", str(tmp_path / "reports"),
              "--provider-base-url", sandbox]

    assert main(["run", str(spec), *common]) == 0
    assert httpx.get(f"{sandbox}/_sandbox/stats").json()["accepted"] == 0
    with store.connect(db) as shared:
        status = operations.campaign_status(shared, "welcome")
    queued = status["states"]["queued"]
    assert set(status["states"]) == {"queued"} and queued > 0 and status["paused"]
    assert "paused by the operator" in status["last_run"]["stopped_reason"]

    assert main(["resume", str(spec), *common]) == 0
    assert httpx.get(f"{sandbox}/_sandbox/stats").json()["accepted"] == queued
    with store.connect(db) as shared:
        status = operations.campaign_status(shared, "welcome")
    assert status["states"] == {"sent": queued} and not status["paused"]
