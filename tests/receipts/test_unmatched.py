"""Signed receipts that name no message of the outbox: kept apart in `unmatched_events`, never counted in any
report figure, checked again on every ingest and moved into `events` once their message appears. On SQLite and on
PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from pipeline import store
from pipeline.costs.costing import cost_report, period_costs
from pipeline.costs.summary import campaign_summary
from pipeline.receipts.ingest import current_statuses, ingest_spool
from pipeline.receipts.spool import encode_record
from tests.helpers.receipts import T0, add_messages, body, count, second_store, status, write_spool

ISO_DAY = date(2025, 6, 15)  # T0's day


def _ledger(db: store.Store) -> store.Store:
    """`db` holding campaign c1's message m-1, sent at T0 as wamid.1."""
    add_messages(db, "m-1", provider_ids=["wamid.1"], sent_at=datetime.fromtimestamp(T0, tz=UTC))
    return db


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


def _figures(db: store.Store) -> dict[str, object]:
    """Every figure the reports and the run summary show."""
    return {
        "report": cost_report(db, "c1").to_dicts(),
        "period": period_costs(db, ISO_DAY, ISO_DAY).rows.to_dicts(),
        "summary": campaign_summary(db, "c1"),
        "statuses": current_statuses(db, "c1"),
    }


def test_unmatched_receipts_are_kept_apart_and_counted_nowhere(
    db: store.Store, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    with second_store(db, tmp_path, request) as clean_store:
        clean = _ledger(clean_store)
        write_spool(tmp_path / "clean", "1", OURS)
        ingest_spool(clean, tmp_path / "clean")
        clean_figures = _figures(clean)

    _ledger(db)
    write_spool(tmp_path / "sp", "1", [*OURS, *NOT_OURS])
    result = ingest_spool(db, tmp_path / "sp")

    assert (result.events_added, result.unmatched) == (1, 4)
    assert [tuple(r) for r in db.rows("SELECT DISTINCT message_id FROM events")] == [("m-1",)]
    kept = [tuple(r) for r in db.rows(
        "SELECT provider, provider_message_id, message_id FROM unmatched_events ORDER BY provider, 2, 3")]
    assert kept == [("chatapp", "a9", "task-unknown"), ("viber", "5555", None),
                    ("whatsapp", "wamid.X", "not-ours"), ("whatsapp", "wamid.X", "not-ours")]
    assert _figures(db) == clean_figures
    assert db.scalar("SELECT count(*) FROM message_status WHERE message_id <> 'm-1'") == 0
    # Replaying the spool keeps nothing twice.
    db.execute("DELETE FROM spool_files")
    again = ingest_spool(db, tmp_path / "sp")
    assert (again.events_added, again.unmatched) == (0, 0)
    assert count(db, "unmatched_events") == 4


def test_a_kept_apart_receipt_moves_in_once_its_message_appears(db: store.Store, tmp_path: Path) -> None:
    _ledger(db)
    write_spool(tmp_path / "sp", "1", NOT_OURS)
    assert ingest_spool(db, tmp_path / "sp").unmatched == 4
    # Its message is queued later (ours after all), and the Viber send's token is recorded: no new file needed.
    add_messages(db, "not-ours", campaign="c2")
    add_messages(db, "v-1", campaign="c2", recipient="u1", channel="viber")
    db.execute("UPDATE outbox SET provider_message_id = '5555' WHERE message_id = 'v-1'")
    result = ingest_spool(db, tmp_path / "sp")
    assert (result.files, result.promoted) == (0, 3)
    assert current_statuses(db, "c2") == {"read": 1, "delivered": 1}
    # The ChatApp receipt still names no message: it stays, never dropped.
    assert [tuple(r) for r in db.rows("SELECT provider FROM unmatched_events")] == [("chatapp",)]
    # A provider's retry of a receipt already moved in adds nothing.
    write_spool(tmp_path / "sp", "2", NOT_OURS[:1])
    retry = ingest_spool(db, tmp_path / "sp")
    assert (retry.events_added, retry.unmatched, retry.promoted) == (0, 0, 0)
    assert db.scalar("SELECT count(*) FROM events WHERE message_id = 'not-ours'") == 2
