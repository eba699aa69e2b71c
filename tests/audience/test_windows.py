"""The Messenger / Instagram 24-hour window: eligibility from the last inbound times (pipeline.audience.windows)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import polars as pl

from pipeline.audience.windows import last_inbound_times, outside_window
from pipeline.channels import messenger_webhooks
from pipeline.channels.whatsapp_webhooks import sign

NOW = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)
FRAME = pl.DataFrame({"row_number": [2, 3, 4, 5, 6], "user_id": ["a", "b", "c", "d", "e"], "text": list("vwxyz")})
LAST = {"a": NOW - timedelta(hours=1), "b": NOW - timedelta(hours=30), "d": NOW - timedelta(hours=24),
        "e": NOW - timedelta(hours=24, seconds=1), "zz": NOW}


def test_marketing_send_rejects_unknown_and_stale_users() -> None:
    eligible, rejects = outside_window(FRAME, user_column="user_id", last_inbound=LAST, now=NOW, category="marketing")
    assert eligible.columns == FRAME.columns
    assert eligible["user_id"].to_list() == ["a", "d"]  # exactly 24 h old is still inside; order kept
    assert rejects["row_number"].to_list() == [3, 4, 6]
    assert set(rejects["reason"]) == {"outside_window"}
    details = dict(zip(rejects["row_number"], rejects["detail"], strict=True))
    assert details[4] == "no message from this user on record"
    assert details[3] == "last message from this user at 2026-05-03T06:00:00Z, more than 24 h before the send"


def test_non_marketing_needs_a_message_tag_outside_the_window() -> None:
    tagged, none = outside_window(FRAME, user_column="user_id", last_inbound=LAST, now=NOW, category="utility",
                                  message_tag="ACCOUNT_UPDATE")
    assert tagged.height == FRAME.height and none.is_empty()
    untagged, rejects = outside_window(FRAME, user_column="user_id", last_inbound=LAST, now=NOW, category="utility")
    assert untagged["user_id"].to_list() == ["a", "d"] and rejects.height == 3


def test_marketing_ignores_a_tag_and_hours_are_configurable() -> None:
    eligible, _ = outside_window(FRAME, user_column="user_id", last_inbound=LAST, now=NOW, category="marketing",
                                 message_tag="ACCOUNT_UPDATE")
    assert eligible["user_id"].to_list() == ["a", "d"]
    week, _ = outside_window(FRAME, user_column="user_id", last_inbound=LAST, now=NOW, hours=24 * 7,
                             category="marketing")
    assert week["user_id"].to_list() == ["a", "b", "d", "e"]


def test_empty_inputs() -> None:
    eligible, rejects = outside_window(FRAME, user_column="user_id", last_inbound={}, now=NOW, category="marketing")
    assert eligible.is_empty() and rejects.height == 5
    eligible, rejects = outside_window(FRAME.clear(), user_column="user_id", last_inbound=LAST, now=NOW,
                                       category="marketing")
    assert eligible.is_empty() and rejects.is_empty()


def test_last_inbound_times_per_provider_from_duckdb(con) -> None:
    rows = [("e1", "messenger", "a", NOW - timedelta(hours=5)), ("e2", "messenger", "a", NOW - timedelta(hours=2)),
            ("e3", "instagram", "a", NOW), ("e4", "messenger", "b", NOW - timedelta(days=3))]
    con.executemany("INSERT INTO inbound (event_id, provider, sender, occurred_at) VALUES (?, ?, ?, ?)", rows)
    times = last_inbound_times(con, "messenger")
    assert times == {"a": NOW - timedelta(hours=2), "b": NOW - timedelta(days=3)}
    assert all(t.tzinfo is not None and t.utcoffset() == timedelta(0) for t in times.values())
    assert last_inbound_times(con, "viber") == {}


def test_a_webhook_reply_opens_the_window(con) -> None:
    """An inbound message parsed from a (signed) webhook, stored in `inbound`, makes its sender eligible."""
    at_ms = int((NOW - timedelta(hours=3)).timestamp() * 1000)
    body = json.dumps({"object": "page", "entry": [{"id": "P", "time": at_ms, "messaging": [
        {"sender": {"id": "c"}, "recipient": {"id": "P"}, "timestamp": at_ms, "message": {"mid": "m1", "text": "hi"}}
    ]}]}).encode()
    assert messenger_webhooks.verify(body, {"X-Hub-Signature-256": sign(body, "s")}, "s")
    _, inbound = messenger_webhooks.parse(body)
    for i, item in enumerate(inbound):
        con.execute("INSERT INTO inbound VALUES (?, ?, ?, ?, ?, ?)",
                    [f"i{i}", item.provider, item.sender, item.text, item.occurred_at, item.raw_json])
    eligible, rejects = outside_window(FRAME, user_column="user_id", last_inbound=last_inbound_times(con, "messenger"),
                                       now=NOW, category="marketing")
    assert eligible["user_id"].to_list() == ["c"] and rejects.height == 4
