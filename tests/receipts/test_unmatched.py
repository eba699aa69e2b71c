"""Signed receipts that name no message of the outbox: kept apart in `unmatched_events`, never counted in any
report figure, checked again on every ingest and moved into `events` once their message appears."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import duckdb

from pipeline import store
from pipeline.costs.costing import cost_report, period_costs
from pipeline.costs.summary import campaign_summary
from pipeline.receipts.ingest import current_statuses, ingest_spool
from pipeline.receipts.spool import encode_record
from tests.helpers.receipts import T0, body, status, write_spool

ISO_DAY = date(2025, 6, 15)  # T0's day


def _ledger(path: Path) -> duckdb.DuckDBPyConnection:
    con = store.connect(path)
    con.execute("INSERT INTO outbox (message_id, campaign_id, recipient_key, channel, sender, payload_json, state,"
                " queued_at, sent_at, provider_message_id) VALUES ('m-1', 'c1', '+16505551234', 'whatsapp', 'S1',"
                " '{}', 'sent', now(), to_timestamp(?), 'wamid.1')", [T0])
    return con


OURS = [encode_record("whatsapp", body([status("wamid.1", "delivered", T0 + 5, message_id="m-1",
                                               category="marketing")]))]
NOT_OURS = [
    encode_record("whatsapp", body([status("wamid.X", "delivered", T0 + 6, message_id="not-ours",
                                           category="marketing"),
                                    status("wamid.X", "read", T0 + 9, message_id="not-ours")])),
    encode_record("viber", json.dumps({"event": "delivered", "timestamp": (T0 + 7) * 1000,
                                       "message_token": 5555, "user_id": "u1"}).encode()),
    encode_record("chatapp", json.dumps([{"Status": "Delivered", "TaskId": "task-unknown", "MessageId": "a9",
                                          "To": "6591000001", "Timestamp": (T0 + 8) * 1000}]).encode()),
]


def _figures(con: duckdb.DuckDBPyConnection) -> dict[str, object]:
    """Every figure the reports and the run summary show."""
    return {
        "report": cost_report(con, "c1").to_dicts(),
        "period": period_costs(con, ISO_DAY, ISO_DAY).rows.to_dicts(),
        "summary": campaign_summary(con, "c1"),
        "statuses": current_statuses(con, "c1"),
    }


def test_unmatched_receipts_are_kept_apart_and_counted_nowhere(tmp_path: Path) -> None:
    clean = _ledger(tmp_path / "clean.duckdb")
    write_spool(tmp_path / "clean", "1", OURS)
    ingest_spool(clean, tmp_path / "clean")

    con = _ledger(tmp_path / "db.duckdb")
    write_spool(tmp_path / "sp", "1", [*OURS, *NOT_OURS])
    result = ingest_spool(con, tmp_path / "sp")

    assert (result.events_added, result.unmatched) == (1, 4)
    assert con.execute("SELECT DISTINCT message_id FROM events").fetchall() == [("m-1",)]
    kept = con.execute("SELECT provider, provider_message_id, message_id FROM unmatched_events ORDER BY ALL").fetchall()
    assert kept == [("chatapp", "a9", "task-unknown"), ("viber", "5555", None),
                    ("whatsapp", "wamid.X", "not-ours"), ("whatsapp", "wamid.X", "not-ours")]
    assert _figures(con) == _figures(clean)
    assert con.execute("SELECT count(*) FROM message_status WHERE message_id <> 'm-1'").fetchall() == [(0,)]
    # Replaying the spool keeps nothing twice.
    con.execute("DELETE FROM spool_files")
    again = ingest_spool(con, tmp_path / "sp")
    assert (again.events_added, again.unmatched) == (0, 0)
    assert con.execute("SELECT count(*) FROM unmatched_events").fetchall() == [(4,)]


def test_a_kept_apart_receipt_moves_in_once_its_message_appears(tmp_path: Path) -> None:
    con = _ledger(tmp_path / "db.duckdb")
    write_spool(tmp_path / "sp", "1", NOT_OURS)
    assert ingest_spool(con, tmp_path / "sp").unmatched == 4
    # Its message is queued later (ours after all), and the Viber send's token is recorded: no new file needed.
    con.execute("INSERT INTO outbox (message_id, campaign_id, recipient_key, channel, sender, payload_json, state,"
                " queued_at) VALUES ('not-ours', 'c2', '+16505551234', 'whatsapp', 'S1', '{}', 'sent', now()),"
                " ('v-1', 'c2', 'u1', 'viber', 'S1', '{}', 'sent', now())")
    con.execute("UPDATE outbox SET provider_message_id = '5555' WHERE message_id = 'v-1'")
    result = ingest_spool(con, tmp_path / "sp")
    assert (result.files, result.promoted) == (0, 3)
    assert current_statuses(con, "c2") == {"read": 1, "delivered": 1}
    # The ChatApp receipt still names no message: it stays, never dropped.
    assert con.execute("SELECT provider FROM unmatched_events").fetchall() == [("chatapp",)]
    # A provider's retry of a receipt already moved in adds nothing.
    write_spool(tmp_path / "sp", "2", NOT_OURS[:1])
    retry = ingest_spool(con, tmp_path / "sp")
    assert (retry.events_added, retry.unmatched, retry.promoted) == (0, 0, 0)
    assert con.execute("SELECT count(*) FROM events WHERE message_id = 'not-ours'").fetchall() == [(2,)]
