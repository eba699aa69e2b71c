"""A suppressed recipient's reject says how they opted out (the suppressions table's reason), by phone in any
notation and by user id; an address the reasons do not know keeps the plain detail."""

from __future__ import annotations

from pathlib import Path

from pipeline.render.prepare import prepare_audience
from pipeline.render.prepare_ids import prepare_ids


def test_phone_rejects_name_the_reason(tmp_path: Path) -> None:
    audience = tmp_path / "a.csv"
    audience.write_text("phone,opt_in\n+1 201-552-0895,yes\n+12015520896,yes\n+12015520897,yes\n+12015520898,yes\n")
    reasons = {"+12015520895": "stop_reply", "12015520896": "opt_out_button", "+12015520897": "manual"}
    prepared = prepare_audience(audience, channel="whatsapp", category="utility", suppressed=frozenset(reasons),
                                suppression_reasons=reasons)
    assert prepared.rejects.select("row_number", "detail").rows() == [
        (2, "on the whatsapp suppression list (opted out earlier: replied STOP)"),
        (3, "on the whatsapp suppression list (opted out earlier: tapped an opt-out button)"),
        (4, "on the whatsapp suppression list (opted out earlier: manual)"),
    ]
    plain = prepare_audience(audience, channel="whatsapp", category="utility", suppressed={"+12015520898"})
    assert plain.rejects["detail"].to_list() == ["on the whatsapp suppression list (opted out earlier)"]


def test_id_rejects_name_the_reason(tmp_path: Path) -> None:
    audience = tmp_path / "u.csv"
    audience.write_text("user_id,opt_in\n7100000000000001,yes\n7100000000000002,yes\n")
    prepared = prepare_ids(audience, channel="viber", category="utility",
                           suppressed={"7100000000000001": "unsubscribe"})
    assert prepared.rejects.select("row_number", "reason", "detail").rows() == [
        (2, "suppressed", "on the viber suppression list (opted out earlier: unsubscribed)")]
