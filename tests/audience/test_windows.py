"""The Messenger / Instagram 24-hour window: eligibility from the last inbound times (pipeline.audience.windows).
Last inbound times are read from the store: on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import polars as pl

from pipeline.audience.windows import last_inbound_times, outside_window
from pipeline.channels import messenger_webhooks
from pipeline.channels.whatsapp_webhooks import sign
from pipeline.store import Store, run_many

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
    tagged, never = outside_window(FRAME, user_column="user_id", last_inbound=LAST, now=NOW, category="utility",
                                   message_tag="ACCOUNT_UPDATE")
    # Any age once the user has written; "c" never wrote, and no tag reaches them.
    assert tagged["user_id"].to_list() == ["a", "b", "d", "e"]
    assert never["detail"].to_list() == ["no message from this user on record: ACCOUNT_UPDATE needs one"]
    untagged, rejects = outside_window(FRAME, user_column="user_id", last_inbound=LAST, now=NOW, category="utility")
    assert untagged["user_id"].to_list() == ["a", "d"] and rejects.height == 3


def test_human_agent_reaches_only_users_who_wrote_within_seven_days() -> None:
    last = {"a": NOW - timedelta(days=10), "b": NOW - timedelta(days=6, hours=23), "d": NOW - timedelta(hours=2)}
    eligible, rejects = outside_window(FRAME, user_column="user_id", last_inbound=last, now=NOW, category="utility",
                                       message_tag="HUMAN_AGENT")
    assert eligible["user_id"].to_list() == ["b", "d"]
    details = dict(zip(rejects["row_number"], rejects["detail"], strict=True))
    assert details == {
        2: "last message from this user at 2026-04-24T12:00:00Z, more than 168 h before the send"
             " (HUMAN_AGENT allows 168 h)",
        4: "no message from this user on record: HUMAN_AGENT needs one",
        6: "no message from this user on record: HUMAN_AGENT needs one",
    }


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


def test_last_inbound_times_per_provider_from_the_store(db: Store) -> None:
    rows = [("e1", "messenger", "a", NOW - timedelta(hours=5)), ("e2", "messenger", "a", NOW - timedelta(hours=2)),
            ("e3", "instagram", "a", NOW), ("e4", "messenger", "b", NOW - timedelta(days=3))]
    with db.write() as conn:
        run_many(conn, "INSERT INTO inbound (event_id, provider, sender, occurred_at) VALUES (:e, :p, :s, :at)",
                 [{"e": e, "p": p, "s": s, "at": at} for e, p, s, at in rows])
    times = last_inbound_times(db, "messenger")
    assert times == {"a": NOW - timedelta(hours=2), "b": NOW - timedelta(days=3)}
    assert all(t.tzinfo is not None and t.utcoffset() == timedelta(0) for t in times.values())
    assert last_inbound_times(db, "viber") == {}


def test_a_webhook_reply_opens_the_window(db: Store) -> None:
    """An inbound message parsed from a (signed) webhook, stored in `inbound`, makes its sender eligible."""
    at_ms = int((NOW - timedelta(hours=3)).timestamp() * 1000)
    body = json.dumps({"object": "page", "entry": [{"id": "P", "time": at_ms, "messaging": [
        {"sender": {"id": "c"}, "recipient": {"id": "P"}, "timestamp": at_ms, "message": {"mid": "m1", "text": "hi"}}
    ]}]}).encode()
    assert messenger_webhooks.verify(body, {"X-Hub-Signature-256": sign(body, "s")}, "s")
    _, inbound = messenger_webhooks.parse(body)
    with db.write() as conn:
        run_many(conn, "INSERT INTO inbound (event_id, provider, sender, text, occurred_at, raw_json) "
                       "VALUES (:e, :p, :s, :t, :at, :raw)",
                 [{"e": f"i{i}", "p": item.provider, "s": item.sender, "t": item.text, "at": item.occurred_at,
                   "raw": item.raw_json} for i, item in enumerate(inbound)])
    eligible, rejects = outside_window(FRAME, user_column="user_id", last_inbound=last_inbound_times(db, "messenger"),
                                       now=NOW, category="marketing")
    assert eligible["user_id"].to_list() == ["c"] and rejects.height == 4
