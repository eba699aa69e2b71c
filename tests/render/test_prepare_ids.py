"""Preparation for id-addressed channels: PSIDs, Viber ids and e-mail addresses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pipeline.render.prepare_ids import prepare_ids
from pipeline.spec import TemplateSpec

TEMPLATE = TemplateSpec(name="t", language="en", category="marketing", text="Hi {{ name }}", body=["{{ name }}"])


def _reasons(prepared) -> dict[int, str]:
    return dict(prepared.rejects.select("row_number", "reason").iter_rows())


def test_messenger_marketing_needs_the_24h_window(tmp_path):
    csv = tmp_path / "a.csv"
    csv.write_text("user_id,opt_in,first_name\n1000001,yes,Ann\n1000002,yes,Bob\n1000001,yes,Ann again\n"
                   ",yes,Cy\n1000003,maybe,Di\n1000004,no,Ed\nabc,yes,Fi\n1000005,yes,\n")
    now = datetime(2026, 11, 25, 12, tzinfo=UTC)
    inbound = {"1000001": now - timedelta(hours=2), "1000002": now - timedelta(hours=30),
               "1000005": now - timedelta(hours=1)}
    prepared = prepare_ids(csv, channel="messenger", category="marketing", template=TEMPLATE,
                           variables={"name": "first_name"}, last_inbound=inbound, now=now)
    assert prepared.accepted["recipient_key"].to_list() == ["1000001"]
    assert prepared.accepted["text"].to_list() == ["Hi Ann"]
    assert _reasons(prepared) == {3: "outside_window", 4: "duplicate", 5: "bad_row", 6: "bad_row",
                                  7: "no_opt_in", 8: "invalid_number", 9: "missing_variable"}
    assert prepared.rows_read == 8


def test_email_addresses_are_checked_lowercased_deduped_and_suppressed(tmp_path):
    csv = tmp_path / "e.csv"
    csv.write_text("email,opt_in,first_name\nAnn@Example.com,yes,Ann\nann@example.com,yes,Ann\n"
                   "not-an-address,yes,X\nbob@example.org,yes,Bob\ncy@example.net,yes,Cy\n")
    prepared = prepare_ids(csv, channel="email", category="marketing", template=TEMPLATE,
                           variables={"name": "first_name"}, suppressed={"cy@example.net"})
    assert prepared.accepted["recipient_key"].to_list() == ["ann@example.com", "bob@example.org"]
    assert _reasons(prepared) == {3: "duplicate", 4: "bad_row", 6: "suppressed"}
