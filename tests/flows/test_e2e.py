"""End to end: the real Prefect flow against the sandbox and the receiver on loopback.

The numbers in the store (a SQLite file: the subject is the flow, not the store) and in the report are checked
against what the sandbox says it accepted and which outcome it reported for each message — counted by the sandbox,
not by us.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from decimal import Decimal
from pathlib import Path

import httpx
import polars as pl
import pytest
import yaml

from pipeline import store
from pipeline.receipts.ingest import ingest_spool
from pipeline.receipts.receiver import create_receiver_app, secrets_from_env
from pipeline.sandbox.whatsapp import SandboxConfig, create_app
from pipeline.servers import serve_in_thread
from pipeline.store.arrow import read_arrow

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def services(tmp_path, prefect_harness):
    spool = tmp_path / "spool"
    spool.mkdir()
    secrets = secrets_from_env()
    with serve_in_thread(create_receiver_app(spool, secrets)) as receiver_url:
        config = SandboxConfig(
            access_token="test-token", app_secret="test-app-secret", webhook_url=f"{receiver_url}/webhooks/whatsapp",
            templates={"welcome_offer": "marketing"}, seed=11, webhook_delay_s=(0.01, 0.05),
        )
        with serve_in_thread(create_app(config)) as sandbox_url:
            yield {"spool": spool, "receiver": receiver_url, "sandbox": sandbox_url}


def _spec(tmp_path: Path, rows: int) -> Path:
    audience = tmp_path / "audience.csv"
    lines = (ROOT / "audiences/sample.csv").read_text().splitlines()
    audience.write_text("\n".join(lines[: rows + 1]) + "\n")
    data = yaml.safe_load((ROOT / "campaigns/welcome.yaml").read_text())
    data.update(audience=str(audience), receipts_wait_s=30)
    data["rate_limit"] = {"max_per_second": 500, "concurrency": 8}
    path = tmp_path / "welcome.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_campaign_flow_end_to_end(tmp_path, services):
    from flows.campaign import campaign_flow

    db = str(tmp_path / "campaigns.sqlite")
    summary = campaign_flow(
        str(_spec(tmp_path, 400)), database=db, spool_dir=str(services["spool"]),
        reports_dir=str(tmp_path / "reports"), provider_base_url=services["sandbox"],
    )
    stats = httpx.get(f"{services['sandbox']}/_sandbox/stats").json()
    by_id = {m["biz_opaque_callback_data"]: m for m in stats["messages"]}

    with store.connect(db) as shared:
        outbox = pl.from_arrow(read_arrow(shared, "SELECT message_id, state, recipient_key FROM outbox"))
        status = pl.from_arrow(read_arrow(shared, "SELECT message_id, status, error_code FROM message_status"))
        rejects = shared.scalar("SELECT count(*) FROM rejects")

    # Every accepted row was sent exactly once, and the sandbox accepted exactly those.
    assert summary["rows_read"] == 400 and summary["accepted"] + rejects == 400
    assert outbox.height == summary["accepted"] and set(outbox["state"]) == {"sent"}
    assert stats["accepted"] == outbox.height and stats["duplicate_callback_data"] == 0
    assert set(by_id) == set(outbox["message_id"])
    assert {m["to"] for m in stats["messages"]} == {p.lstrip("+") for p in outbox["recipient_key"]}

    # Each message's derived status is the outcome the sandbox reported, whatever the order.
    assert status.height == outbox.height
    for message_id, derived, code in status.iter_rows():
        expected = by_id[message_id]
        assert derived == expected["outcome"], message_id
        if derived == "failed":
            assert code == str(expected["error_code"])

    outcomes = [m["outcome"] for m in stats["messages"]]
    assert summary["delivered"] == outcomes.count("delivered") + outcomes.count("read")
    assert summary["read"] == outcomes.count("read")
    assert summary["failed"] == outcomes.count("failed")

    # The report prices every delivered marketing message at its market's card rate.
    report = pl.read_csv(Path(summary["report_csv"]), infer_schema=False)
    with store.connect(db) as shared:
        fees = shared.rows(
            """
            SELECT p.platform_fee_usd FROM outbox o JOIN message_status s ON s.message_id = o.message_id
            JOIN markets m ON m.channel = 'whatsapp' AND m.region = o.country
            JOIN prices p ON p.channel = 'whatsapp' AND p.market = m.market AND p.category = 'marketing'
            WHERE s.status IN ('delivered', 'read')
            """
        )
    expected_fee = sum(Decimal(str(fee)) for (fee,) in fees)  # money is exact (its text on SQLite)
    assert sum(Decimal(v) for v in report["platform_fee_usd"]) == pytest.approx(expected_fee)
    assert Decimal(str(summary["service_fee_usd"])) == Decimal("0.005") * outbox.height
    assert Path(summary["report_html"]).read_text().count("<tr") > 3

    # Running the same campaign again sends nothing twice.
    again = campaign_flow(
        str(_spec(tmp_path, 400)), database=db, spool_dir=str(services["spool"]),
        reports_dir=str(tmp_path / "reports"), provider_base_url=services["sandbox"],
    )
    assert httpx.get(f"{services['sandbox']}/_sandbox/stats?messages=0").json()["accepted"] == stats["accepted"]
    assert again["sent"] == summary["sent"]


def test_forged_webhook_is_rejected_and_leaves_no_event(tmp_path):
    body = json.dumps({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{
        "field": "messages", "value": {"messaging_product": "whatsapp", "statuses": [{
            "id": "wamid.forged", "status": "delivered", "timestamp": "1750030073", "recipient_id": "447700900123",
            "biz_opaque_callback_data": "forged"}]}}]}]}).encode()
    forged = "sha256=" + hmac.new(b"not-the-app-secret", body, hashlib.sha256).hexdigest()
    genuine = "sha256=" + hmac.new(b"test-app-secret", body, hashlib.sha256).hexdigest()
    spool = tmp_path / "spool"
    with serve_in_thread(create_receiver_app(spool, secrets_from_env())) as receiver:
        answer = httpx.post(f"{receiver}/webhooks/whatsapp", content=body,
                            headers={"X-Hub-Signature-256": forged, "Content-Type": "application/json"})
        assert answer.status_code == 401
        assert httpx.post(f"{receiver}/webhooks/whatsapp", content=body,
                          headers={"X-Hub-Signature-256": genuine}).status_code == 200
    # The receiver has stopped, which closed its spool file: everything it acknowledged is ready to ingest.
    with store.connect(tmp_path / "campaigns.sqlite") as shared:
        ingest_spool(shared, spool)
        ids = [r[0] for r in shared.rows("SELECT provider_message_id FROM unmatched_events")]
        events = shared.scalar("SELECT count(*) FROM events WHERE provider_message_id = 'wamid.forged'")
    # Only the genuine copy landed, kept apart (it names no message of ours); the forged one left nothing.
    assert ids == ["wamid.forged"] and events == 0


def test_whatsapp_to_sms_fallback_reaches_the_undeliverable_once(tmp_path, prefect_harness, monkeypatch):
    from flows.campaign import campaign_flow
    from pipeline.receipts.routes import add_provider_routes
    from pipeline.sandbox.registry import DEMO_ENV
    from pipeline.sandbox.twilio import TwilioSandboxConfig, create_twilio_app

    for name in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"):
        monkeypatch.setenv(name, DEMO_ENV[name])
    spool = tmp_path / "spool"
    spool.mkdir()
    receiver = create_receiver_app(spool, secrets_from_env())
    assert "twilio" in add_provider_routes(receiver)
    with serve_in_thread(receiver) as receiver_url:
        wa = SandboxConfig(access_token="test-token", app_secret="test-app-secret", seed=11, fail_rate=0.2,
                           webhook_url=f"{receiver_url}/webhooks/whatsapp", webhook_delay_s=(0.01, 0.05))
        sms = TwilioSandboxConfig(account_sid=DEMO_ENV["TWILIO_ACCOUNT_SID"], auth_token=DEMO_ENV["TWILIO_AUTH_TOKEN"],
                                  throughput_per_s=1000, refuse_rate=0, seed=3, webhook_delay_s=(0.01, 0.05))
        with serve_in_thread(create_app(wa)) as wa_url, serve_in_thread(create_twilio_app(sms)) as sms_url:
            spec = _spec(tmp_path, 200)
            data = yaml.safe_load(spec.read_text())
            data["fallback"] = {"channel": "sms", "sender": "+15005550006", "after_s": 3600,
                                "provider": {"options": {"status_callback": f"{receiver_url}/webhooks/twilio"}}}
            spec.write_text(yaml.safe_dump(data))
            db = str(tmp_path / "fb.sqlite")
            summary = campaign_flow(str(spec), database=db, spool_dir=str(spool),
                                    reports_dir=str(tmp_path / "reports"), provider_base_url=wa_url,
                                    fallback_base_url=sms_url)
            wa_stats = httpx.get(f"{wa_url}/_sandbox/stats").json()
            sms_stats = httpx.get(f"{sms_url}/_sandbox/stats").json()
    undeliverable = {m["to"] for m in wa_stats["messages"] if m["error_code"] == 131026}
    assert undeliverable, "the sandbox should have failed some as 131026"
    sms_to = [m["to"].lstrip("+") for m in sms_stats["messages"]]
    # Exactly the 131026 recipients got the SMS, each once; the other failures (opt-outs) did not.
    assert sorted(sms_to) == sorted(undeliverable) and len(set(sms_to)) == len(sms_to)
    leg = summary["fallback"]
    assert leg["channel"] == "sms" and leg["sent"] == len(undeliverable) and leg["delivered"] > 0
    with store.connect(db) as shared:
        legs = {c: n for c, n in shared.rows("SELECT campaign_id, count(*) FROM outbox GROUP BY campaign_id")}
    assert legs == {"welcome": summary["sent"], "welcome-fallback": len(undeliverable)}
