"""Replies and taps through ingest (SQLite and PostgreSQL): a tap on a spec's opt-out button suppresses the
recipient, as STOP does, and the next campaign skips them; another button's tap suppresses nobody."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import store
from pipeline.dispatch.outbox import register_campaign
from pipeline.receipts.ingest import ingest_spool
from pipeline.receipts.replies import opt_out_payloads
from pipeline.render.prepare import prepare_audience
from pipeline.spec import SpecError, load_spec
from tests.helpers.receipts import T0, body, line, write_spool


def tap(sender: str, payload: str, mid: str, context: str | None = None) -> dict:
    message = {"from": sender, "id": mid, "timestamp": str(T0), "type": "button",
               "button": {"payload": payload, "text": "Stop promotions"}}
    if context:
        message["context"] = {"from": "15550001111", "id": context}
    return message


def test_the_demo_opt_out_button_suppresses_and_the_next_campaign_skips(db: store.Store, tmp_path: Path) -> None:
    spec = load_spec("campaigns/welcome.yaml")
    register_campaign(db, spec, "welcome")
    assert opt_out_payloads(db) == {"STOP_PROMOS"}
    write_spool(tmp_path / "sp", "1", [line(body(messages=[
        tap("12015520895", "STOP_PROMOS", "wamid.t1", context="wamid.sent1"),
        tap("12015520896", "MORE_INFO", "wamid.t2"),  # not an opt-out
    ]))])
    result = ingest_spool(db, tmp_path / "sp")
    assert result.suppressions_added == 1
    assert db.rows("SELECT channel, address, reason, source FROM suppressions") == [
        ("whatsapp", "+12015520895", "opt_out_button", "wamid.t1")]
    audience = tmp_path / "a.csv"
    audience.write_text("phone,first_name,city,coupon,opt_in\n+1 201-552-0895,Liam,Austin,W-1,yes\n"
                        "+1 201-552-0896,Ann,Austin,W-2,yes\n")
    prepared = prepare_audience(audience, channel="whatsapp", category="marketing", template=spec.template,
                                variables=spec.variables, suppressed=store.suppressed_addresses(db, "whatsapp"))
    assert prepared.accepted["phone_e164"].to_list() == ["+12015520896"]
    assert prepared.counts == {"suppressed": 1}


def test_opt_out_payloads_are_bounded(db: store.Store) -> None:
    spec = load_spec("campaigns/welcome.yaml")
    second = spec.template.buttons[0].model_copy(update={"payload": "STOP_2"})
    register_campaign(db, spec, "welcome")
    register_campaign(db, spec.model_copy(update={
        "template": spec.template.model_copy(update={"buttons": [second]})}), "welcome-2")
    assert opt_out_payloads(db, {"CAMPAIGN_MAX_OPT_OUT_PAYLOADS": "2"}) == {"STOP_PROMOS", "STOP_2"}
    with pytest.raises(SpecError, match="CAMPAIGN_MAX_OPT_OUT_PAYLOADS: more than 1"):
        opt_out_payloads(db, {"CAMPAIGN_MAX_OPT_OUT_PAYLOADS": "1"})
