"""A template Meta re-categorises during a send (template_category_update): the messages sent before the change are
priced at the old category, those sent after at the new, and the report (CSV, HTML) shows both — against the
WhatsApp sandbox and the webhook receiver on loopback, with the figures worked out by hand from the repo's rate card
(pipeline/data/whatsapp-rates-2026-10-usd.csv, United Kingdom: marketing USD 0.0635, utility USD 0.0220 per
delivered message; pipeline/data/service_fees.csv: WhatsApp 50 points = USD 0.005 per message)."""

from __future__ import annotations

import asyncio
import csv
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import httpx

from pipeline.channels import templates as registry
from pipeline.channels.template_sync import sync
from pipeline.channels.whatsapp import WhatsAppChannel
from pipeline.costs.costing import cost_report, load_prices
from pipeline.costs.report import write_report
from pipeline.dispatch.engine import dispatch_campaign
from pipeline.dispatch.policy import DispatchResult, Guards
from pipeline.dispatch.template_watch import TemplateWatch
from pipeline.receipts.collect import collect_receipts
from pipeline.receipts.ingest import ingest_spool
from pipeline.receipts.receiver import create_receiver_app, secrets_from_env
from pipeline.sandbox.whatsapp import create_app
from pipeline.sandbox.whatsapp_templates import SandboxNumber, SandboxTemplate
from pipeline.servers import serve_in_thread
from pipeline.spec import RateSpec, parse_spec
from pipeline.store import Store
from tests.helpers.channels import FAST_RETRY
from tests.helpers.waiting import wait_for
from tests.helpers.whatsapp import SPEC, TOKEN, config, queue

WABA = "102290129340398"
BEFORE, AFTER = 4, 6  # sent as marketing until the sandbox pauses the template, then as utility


@contextmanager
def _stack(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    spool = tmp_path / "spool"
    spool.mkdir()
    with serve_in_thread(create_receiver_app(spool, secrets_from_env(), rotate_after_s=0.2)) as hook:
        app = create_app(config(
            template_set=[SandboxTemplate(name="hello", components=[{"type": "BODY", "text": "Hi {{1}}."}])],
            phone_numbers=[SandboxNumber(id="111"), SandboxNumber(id="222")], webhook_url=f"{hook}/webhooks/whatsapp",
            fail_rate=0.0, pause_after=BEFORE))
        with serve_in_thread(app) as url:
            yield url, spool


def _send(db: Store, url: str, spool: Path) -> DispatchResult:
    watch = TemplateWatch(db, provider="whatsapp", account=WABA, name="hello", language="en_US",
                          senders=["111"], ingest=lambda: ingest_spool(db, spool), campaign_id="t")
    channels = {"111": WhatsAppChannel(base_url=url, api_version="v23.0", phone_number_id="111", access_token=TOKEN)}
    return asyncio.run(dispatch_campaign(db, "t", channels, rate=RateSpec(max_per_second=50, concurrency=1),
                                         retry=FAST_RETRY, guards=Guards(watch=watch)))


def test_sent_before_the_change_at_the_old_category_after_it_at_the_new_and_the_report_shows_both(
        db: Store, tmp_path: Path) -> None:
    queue(db, BEFORE + AFTER, senders=["111"])  # campaign t, marketing, to +44 77 00 9…: the United Kingdom
    with _stack(tmp_path) as (url, spool):
        sync(db, parse_spec({**SPEC, "provider": {"options": {"waba_id": WABA}}}), base_url=url)
        first = _send(db, url, spool)
        assert first.sent == BEFORE and first.stopped_reason
        with httpx.Client(base_url=url, trust_env=False) as client:  # Meta re-categorises it, and it goes on
            client.post("/_sandbox/templates/hello", json={"category": "UTILITY", "status": "APPROVED"})
        wait_for(lambda: ingest_spool(db, spool) is not None and (
            t := registry.template(db, "whatsapp", "hello", "en_US")) is not None and (t.status, t.category) == (
            "APPROVED", "UTILITY"), timeout_s=30, what="the category and status webhooks in the registry")
        second = _send(db, url, spool)
        assert second.sent == AFTER and second.stopped_reason is None
        collect_receipts(db, spool, "t", wait_s=30)
    load_prices(db, service_fee_usd=0.005)
    rows = {r["category"]: r for r in cost_report(db, "t").iter_rows(named=True)}
    assert set(rows) == {"marketing", "utility"}
    # By hand: 4 × 0.0635 = 0.254 platform + 4 × 0.005 = 0.020 service; 6 × 0.0220 = 0.132 + 6 × 0.005 = 0.030.
    expected = {"marketing": (BEFORE, "0.254", "0.020", "0.274"), "utility": (AFTER, "0.132", "0.030", "0.162")}
    for category, (sent, platform, service, total) in expected.items():
        row = rows[category]
        assert (row["market"], row["sent"], row["delivered"]) == ("United Kingdom", sent, sent)
        assert (row["platform_fee_usd"], row["service_fee_usd"], row["total_usd"]) == (
            Decimal(platform), Decimal(service), Decimal(total))
        # Sent at the category Meta billed: neither part is a re-categorisation surprise.
        assert (row["recategorised"], row["recategorisation_cost_usd"]) == (0, Decimal("0"))
    files = write_report(db, "t", tmp_path / "report", settle=False)
    with files.csv.open() as f:
        in_csv = {r["category"]: r for r in csv.DictReader(f)}
    assert {c: (in_csv[c]["sent"], in_csv[c]["total_usd"]) for c in in_csv} == {
        "marketing": ("4", "0.274000"), "utility": ("6", "0.162000")}
    html = files.html.read_text()
    assert "marketing (4 sent), then utility (6 sent)" in html
    assert "0.274000" in html and "0.162000" in html and "0.436000" in html  # both parts and their sum
