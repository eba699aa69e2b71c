"""Ingest of closed spool files into the store (pipeline.receipts.ingest): idempotence, quarantine, opt-outs. On SQLite
and on PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipeline import store
from pipeline.receipts.event_ids import event_id
from pipeline.receipts.ingest import current_statuses, ingest_spool
from pipeline.receipts.spool import encode_record
from pipeline.receipts.staging import is_stop_keyword
from tests.helpers.receipts import (
    T0,
    add_messages,
    body,
    count,
    inbound,
    line,
    pooled_connections,
    staging_left,
    status,
    write_spool,
)


def sent_as(db: store.Store, *wamids: str) -> None:
    """Outbox messages the provider named `wamids` (receipts naming no message of ours are kept apart)."""
    add_messages(db, *(f"m-{wamid}" for wamid in wamids), provider_ids=wamids)


@contextmanager
def inserts_fail(db: store.Store, table: str, message: str) -> Iterator[None]:
    """Every INSERT into `table` fails (a trigger of the store itself) until the block ends."""
    if db.dialect == "sqlite":
        db.execute(f"CREATE TRIGGER fail_insert BEFORE INSERT ON {table} BEGIN SELECT RAISE(ABORT, '{message}'); END")
    else:
        db.execute(f"CREATE FUNCTION fail_insert() RETURNS trigger LANGUAGE plpgsql AS "
                   f"$$ BEGIN RAISE EXCEPTION '{message}'; END $$")
        db.execute(f"CREATE TRIGGER fail_insert BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION fail_insert()")
    try:
        yield
    finally:
        db.execute("DROP TRIGGER fail_insert" + ("" if db.dialect == "sqlite" else f" ON {table}"))


def test_ingest_maps_receipts_to_event_rows(db: store.Store, tmp_path: Path) -> None:
    write_spool(tmp_path / "sp", "1", [
        line(body([status("wamid.A", "sent", T0, message_id="m-A", category="marketing"),
                   status("wamid.A", "delivered", T0 + 5, message_id="m-A")])),
        line(body([status("wamid.A", "delivered", T0 + 5, message_id="m-A")])),  # Meta re-delivery
    ])
    add_messages(db, "m-A")
    result = ingest_spool(db, tmp_path / "sp")
    assert (result.files, result.events_added, result.quarantined, result.skipped_files) == (1, 2, 0, 0)
    (row,) = db.rows(
        "SELECT provider, provider_message_id, message_id, status, category, pricing_type, recipient,"
        " occurred_at, received_at, raw_json FROM events WHERE status = 'sent'")
    assert tuple(row[:7]) == ("whatsapp", "wamid.A", "m-A", "sent", "marketing", "regular", "16505551234")
    assert store.utc(row[7]) == datetime.fromtimestamp(T0, tz=UTC)
    assert store.utc(row[8]) == datetime(2025, 6, 16, tzinfo=UTC)
    assert json.loads(row[9])["id"] == "wamid.A"
    assert [tuple(r) for r in db.rows("SELECT name, events FROM spool_files")] == [("spool-1.jsonl", 3)]


def test_replaying_a_file_adds_nothing(db: store.Store, tmp_path: Path) -> None:
    spool_dir = tmp_path / "sp"
    write_spool(spool_dir, "1", [
        line(body([status("wamid.A", "sent", T0, message_id="m-A")],
                  [inbound("16505551234", "hello", "wamid.in1")])),
        b"{broken",
    ])
    add_messages(db, "m-A")
    first = ingest_spool(db, spool_dir)
    assert (first.events_added, first.inbound_added, first.quarantined) == (1, 1, 1)
    again = ingest_spool(db, spool_dir)
    assert (again.files, again.skipped_files, again.events_added) == (0, 1, 0)
    # Even with the bookkeeping lost, the row hashes keep the replay from adding anything.
    db.execute("DELETE FROM spool_files")
    replay = ingest_spool(db, spool_dir)
    assert (replay.files, replay.events_added, replay.inbound_added, replay.quarantined) == (1, 0, 0, 0)
    # The same receipts under another file name (e.g. a copied spool) are also ignored.
    write_spool(spool_dir, "2", (spool_dir / "spool-1.jsonl").read_bytes().splitlines())
    assert ingest_spool(db, spool_dir).events_added == 0
    assert (count(db, "events"), count(db, "inbound"), count(db, "spool_files")) == (1, 1, 2)


def test_out_of_order_receipts_give_the_right_current_status(db: store.Store, tmp_path: Path) -> None:
    add_messages(db, "m-read", "m-failed", "m-delivered", "m-sent")
    add_messages(db, "m-other", campaign="c2", recipient="+16505550000")
    spool_dir = tmp_path / "sp"
    # File 1 holds the later statuses; file 2 the earlier ones: arrival order is the reverse.
    write_spool(spool_dir, "1", [
        line(body([status("w.r", "read", T0 + 20, message_id="m-read")])),
        line(body([status("w.f", "delivered", T0 + 10, message_id="m-failed")])),
        line(body([status("w.d", "delivered", T0 + 10, message_id="m-delivered")])),
    ])
    write_spool(spool_dir, "2", [
        line(body([status("w.r", "delivered", T0 + 10, message_id="m-read")])),
        line(body([status("w.r", "sent", T0, message_id="m-read")])),
        line(body([status("w.f", "failed", T0 + 30, message_id="m-failed", code=131026)])),
        line(body([status("w.d", "sent", T0, message_id="m-delivered")])),
        line(body([status("w.s", "sent", T0, message_id="m-sent")])),
        line(body([status("w.o", "read", T0, message_id="m-other")])),
    ])
    ingest_spool(db, spool_dir)
    got = dict(db.rows("SELECT message_id, status FROM message_status"))
    assert got == {"m-read": "read", "m-failed": "failed", "m-delivered": "delivered", "m-sent": "sent",
                   "m-other": "read"}
    assert db.scalar("SELECT error_code FROM message_status WHERE message_id = 'm-failed'") == "131026"
    assert current_statuses(db, "c1") == {"read": 1, "failed": 1, "delivered": 1, "sent": 1}
    assert current_statuses(db, "c2") == {"read": 1}
    assert current_statuses(db, "nope") == {}


def test_bad_lines_are_quarantined_and_good_ones_kept(db: store.Store, tmp_path: Path) -> None:
    good = line(body([status("wamid.G", "sent", T0, message_id="m-G")]))
    write_spool(tmp_path / "sp", "1", [
        b"{not json",
        good,
        encode_record("whatsapp", b'{"object": "page", "entry": []}'),  # valid JSON, wrong shape
        encode_record("carrier-pigeon", body([status("x", "sent", T0)])),  # unknown provider
        encode_record("whatsapp", b"\xff\xfe"),  # not UTF-8 at all
        b'["a list"]',
        b'{"provider": "whatsapp"}',  # no body
        b"",  # blank lines are not records
        b'{"provider": "whatsapp", "body": "{\\"object\\": \\"whatsapp_bus',  # torn last line (crash)
    ])
    add_messages(db, "m-G")
    result = ingest_spool(db, tmp_path / "sp")
    assert (result.events_added, result.quarantined) == (1, 7)
    rows = db.rows("SELECT line_number, reason, raw FROM quarantine ORDER BY line_number")
    assert [r[0] for r in rows] == [1, 3, 4, 5, 6, 7, 9]
    reasons = {r[0]: r[1] for r in rows}
    assert "JSONDecodeError" in reasons[1]
    assert "MalformedPayload" in reasons[3] and "whatsapp_business_account" in reasons[3]
    assert "carrier-pigeon" in reasons[4]
    assert rows[0][2] == "{not json"
    assert count(db, "spool_files") == 1


def test_stop_replies_and_opt_out_errors_become_suppressions(db: store.Store, tmp_path: Path) -> None:
    add_messages(db, "m-no-recipient", recipient="+447700900123")
    write_spool(tmp_path / "sp", "1", [
        line(body(messages=[
            inbound("16505551234", "  Stop ", "wamid.s1"),
            inbound("16505551235", "退订", "wamid.s2"),
            inbound("16505551236", "stop please", "wamid.s3"),  # not exactly a keyword
            inbound("16505551237", "unsubscribe", "wamid.s4"),
            inbound("16505551234", "STOP", "wamid.s5", ts=T0 + 60),  # already suppressed
        ])),
        line(body([
            status("wamid.F1", "failed", T0, message_id="m-1", code=131050, recipient="34600111222"),
            status("wamid.F2", "failed", T0, message_id="m-2", code=131026, recipient="34600111333"),
            status("wamid.F3", "failed", T0, message_id="m-no-recipient", code=131050, recipient=None),
        ])),
    ])
    result = ingest_spool(db, tmp_path / "sp")
    assert result.suppressions_added == 5
    got = db.rows("SELECT channel, address, reason, source, since FROM suppressions ORDER BY address")
    assert [(c, a, r, s) for c, a, r, s, _ in got] == [
        ("whatsapp", "+16505551234", "stop_reply", "wamid.s1"),
        ("whatsapp", "+16505551235", "stop_reply", "wamid.s2"),
        ("whatsapp", "+16505551237", "stop_reply", "wamid.s4"),
        ("whatsapp", "+34600111222", "marketing_opt_out", "wamid.F1"),
        ("whatsapp", "+447700900123", "marketing_opt_out", "wamid.F3"),
    ]
    assert store.utc(got[0][4]) == datetime.fromtimestamp(T0, tz=UTC)
    assert store.suppressed_addresses(db, "whatsapp") >= {"+16505551234", "+34600111222"}
    assert count(db, "inbound") == 5


def test_text_holding_nul_is_stored_with_a_replacement_character(db: store.Store, tmp_path: Path) -> None:
    # PostgreSQL's text holds no NUL, yet a signed body may carry one (JSON's \u0000): every store keeps U+FFFD.
    add_messages(db, "m-A")
    write_spool(tmp_path / "sp", "1", [
        line(body([status("wamid.\u0000A", "delivered", T0, message_id="m-A"),
                   status("wamid.F", "failed", T0, message_id="m-\u0000", code=131050, recipient=None)],
                  [inbound("16505551234", "hi\u0000there", "wamid.\u0000in")])),
    ])
    result = ingest_spool(db, tmp_path / "sp")
    assert (result.events_added, result.unmatched, result.inbound_added, result.quarantined) == (1, 1, 1, 0)
    assert db.scalar("SELECT provider_message_id FROM events") == "wamid.\ufffdA"
    assert db.scalar("SELECT message_id FROM unmatched_events") == "m-\ufffd"
    assert [tuple(r) for r in db.rows("SELECT sender, text FROM inbound")] == [("16505551234", "hi\ufffdthere")]
    assert count(db, "suppressions") == 0  # the opt-out names no message of ours, nor an address
    db.execute("DELETE FROM spool_files")
    replay = ingest_spool(db, tmp_path / "sp")  # the ids hash the values as received: nothing twice
    assert (replay.events_added, replay.unmatched, replay.inbound_added) == (0, 0, 0)


@pytest.mark.parametrize("text,expected", [
    ("STOP", True), (" stopall\n", True), ("End", True), ("cancel", True), ("QUIT", True),
    ("退订", True), ("UNSUBSCRIBE", True), ("stop it", False), ("", False), (None, False), ("start", False),
])
def test_stop_keywords(text: str | None, expected: bool) -> None:
    assert is_stop_keyword(text) is expected


def test_a_batch_that_fails_is_not_recorded_and_the_next_run_completes_it(db: store.Store, tmp_path: Path) -> None:
    spool_dir = tmp_path / "sp"
    write_spool(spool_dir, "1", [line(body([status("wamid.A", "sent", T0)],
                                           [inbound("16505551234", "STOP", "wamid.in")]))])
    write_spool(spool_dir, "2", [line(body([status("wamid.B", "sent", T0)]))])
    sent_as(db, "wamid.A", "wamid.B")
    # The receipts are written (in transactions of their own), then the inbound INSERT fails: the batch's last
    # transaction (inbound, suppressions and the files' spool_files rows) is rolled back whole, so the files
    # are still to be ingested, and nothing staged is left behind.
    with inserts_fail(db, "inbound", "simulated crash mid-batch"), pytest.raises(Exception, match="simulated crash"):
        ingest_spool(db, spool_dir)
    assert (count(db, "events"), count(db, "inbound"), count(db, "suppressions"), count(db, "spool_files")) \
        == (2, 0, 0, 0)
    assert staging_left(db) == []
    # The next run adds what is missing, and nothing twice.
    result = ingest_spool(db, spool_dir)
    assert (result.files, result.events_added, result.inbound_added, result.suppressions_added) == (2, 0, 1, 1)
    assert (count(db, "events"), count(db, "inbound"), count(db, "suppressions"), count(db, "spool_files")) \
        == (2, 1, 1, 2)


def test_event_ids_are_stable_and_distinguish_statuses() -> None:
    from pipeline.channels.whatsapp_webhooks import parse_webhook

    (a,), _ = parse_webhook(body([status("wamid.A", "sent", T0)]))
    (b,), _ = parse_webhook(body([status("wamid.A", "sent", T0, message_id="other")]))
    (c,), _ = parse_webhook(body([status("wamid.A", "delivered", T0)]))
    (d,), _ = parse_webhook(body([status("wamid.A", "failed", T0, code=131050)]))
    (e,), _ = parse_webhook(body([status("wamid.A", "failed", T0, code=131026)]))
    ids = [event_id(r) for r in (a, b, c, d, e)]
    assert ids[0] == ids[1]  # same status report, whatever else the payload carried
    assert len(set(ids)) == 4


def test_ingest_restores_the_storage_settings_and_leaves_no_stage(db: store.Store, tmp_path: Path) -> None:
    write_spool(tmp_path / "sp", "1", [line(body([status("wamid.A", "sent", T0)]))])
    write_spool(tmp_path / "sp", "2", [line(body([status("wamid.B", "read", T0)]))])
    sent_as(db, "wamid.A", "wamid.B", "wamid.C")
    result = ingest_spool(db, tmp_path / "sp", batch_bytes=1)  # two batches, overlapped
    assert (result.files, result.events_added) == (2, 2)
    if db.dialect == "sqlite":
        # Receipts are staged with synchronous = NORMAL (their spool stays on disk): every connection is back
        # to FULL, which claims and outcomes need (pipeline/store/dialect.py).
        with pooled_connections(db) as connections:
            assert [c.exec_driver_sql("PRAGMA synchronous").scalar() for c in connections] == [2] * len(connections)
    assert staging_left(db) == []
    assert count(db, "spool_files") == 2
    write_spool(tmp_path / "sp", "3", [line(body([status("wamid.C", "read", T0)]))])
    assert ingest_spool(db, tmp_path / "sp").events_added == 1
