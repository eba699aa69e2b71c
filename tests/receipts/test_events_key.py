"""The events key (message_id, event_id), migration 0009: receipts are stored named, replays add nothing, and a copy
an older version left unnamed never blocks linking. On SQLite and on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from pipeline import store
from pipeline.receipts.ingest import current_statuses, ingest_spool
from tests.helpers.receipts import T0, add_messages, body, line, status, write_spool


def test_a_receipt_without_our_id_is_stored_named_and_a_replay_adds_nothing(db: store.Store, tmp_path: Path) -> None:
    write_spool(tmp_path / "sp", "1", [line(body([status("wamid.W", "delivered", T0)]))])
    add_messages(db, "m-W", provider_ids=["wamid.W"])
    assert ingest_spool(db, tmp_path / "sp").events_added == 1
    assert [tuple(r) for r in db.rows("SELECT message_id, status FROM events")] == [("m-W", "delivered")]

    db.execute("DELETE FROM spool_files")
    assert ingest_spool(db, tmp_path / "sp").events_added == 0
    assert db.scalar("SELECT count(*) FROM events") == 1


def test_an_unnamed_copy_left_by_an_older_version_does_not_block_linking(db: store.Store, tmp_path: Path) -> None:
    write_spool(tmp_path / "sp", "1", [line(body([status("wamid.W", "read", T0)]))])
    add_messages(db, "m-W", provider_ids=["wamid.W"])
    ingest_spool(db, tmp_path / "sp")
    # As the version before 0008 could leave it: stored before the send recorded the provider id, not linked yet.
    db.execute("UPDATE events SET message_id = NULL")

    db.execute("DELETE FROM spool_files")
    again = ingest_spool(db, tmp_path / "sp")  # adds the named copy, then links what is unnamed

    assert again.events_added == 1
    assert sorted(tuple(r) for r in db.rows("SELECT coalesce(message_id, '-'), status FROM events")) == [
        ("-", "read"), ("m-W", "read")]
    assert current_statuses(db, "c1") == {"read": 1}
