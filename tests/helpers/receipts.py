"""Receipts for tests: the real webhook receiver on loopback spooling to a folder (to follow receipts from a
sandbox through the spool into the store), hand-written spool files, outbox messages for receipts to name, a
second store to compare an ingest with, and row counts."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from sqlalchemy import Connection

from pipeline import store
from pipeline.receipts.receiver import create_receiver_app
from pipeline.receipts.routes import add_provider_routes
from pipeline.receipts.spool import encode_record
from pipeline.servers import serve_in_thread
from pipeline.store.bulk import insert_frame
from tests.helpers import stores


@contextmanager
def spooling_receiver(spool_dir: Path, environ: Mapping[str, str]) -> Iterator[str]:
    """Yields the receiver's base URL; routes for the providers whose secrets `environ` holds. On
    exit the receiver stops and closes its spool, so every acknowledged webhook is in a closed file."""
    app = create_receiver_app(spool_dir, {"whatsapp_app_secret": "unused-here", "whatsapp_verify_token": "unused"},
                              rotate_after_s=0.2)
    add_provider_routes(app, environ)
    with serve_in_thread(app) as url:
        yield url


def write_spool(spool_dir: Path, name: str, lines: list[bytes]) -> Path:
    """A closed spool file `spool-<name>.jsonl` holding `lines`, as the receiver would have left it."""
    spool_dir.mkdir(parents=True, exist_ok=True)
    path = spool_dir / f"spool-{name}.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def count(db: store.Store, table: str) -> int:
    return int(db.scalar(f"SELECT count(*) FROM {table}"))


def add_messages(db: store.Store, *message_ids: str, campaign: str = "c1", recipient: str = "+16505551234",
                 channel: str = "whatsapp", sender: str = "S1", state: str = "sent",
                 provider_ids: Sequence[str | None] | None = None, queued_at: datetime | None = None,
                 sent_at: datetime | None = None) -> None:
    """Outbox messages that receipts can name (receipts naming none are kept apart), numbered after the
    campaign's last, in one transaction."""
    first = db.scalar("SELECT coalesce(max(seq), -1) + 1 FROM outbox WHERE campaign_id = :c", c=campaign)
    n = len(message_ids)
    rows = pl.DataFrame({
        "message_id": list(message_ids), "campaign_id": [campaign] * n, "seq": list(range(first, first + n)),
        "recipient_key": [recipient] * n, "channel": [channel] * n, "sender": [sender] * n,
        "payload_json": ["{}"] * n, "state": [state] * n, "attempts": [1] * n,
        "provider_message_id": list(provider_ids) if provider_ids is not None else [None] * n,
        "queued_at": [queued_at or datetime.now(UTC)] * n, "sent_at": [sent_at] * n,
    }, schema_overrides={"provider_message_id": pl.String, "sent_at": pl.Datetime("us", "UTC")})
    with db.write() as conn:
        insert_frame(conn, "outbox", rows)


def second_store(db: store.Store, folder: Path, request: pytest.FixtureRequest) -> store.Store:
    """Another fresh store on `db`'s backend (a test comparing two ingests); `folder` is the test's own, and the
    caller closes it."""
    if db.dialect == "sqlite":
        return store.connect(folder / "second.sqlite")
    return store.connect(stores.new_store_url("postgresql", folder, request))


@contextmanager
def pooled_connections(db: store.Store) -> Iterator[list[Connection]]:
    """Every connection `db`'s pool holds (the idle ones are handed out before a new one is opened)."""
    with ExitStack() as stack:
        first = stack.enter_context(db.engine.connect())
        idle = db.engine.pool.checkedin()  # type: ignore[attr-defined]
        yield [first, *(stack.enter_context(db.engine.connect()) for _ in range(idle))]


def staging_left(db: store.Store) -> list[str]:
    """What an ingest staged beside the store and should have removed (pipeline/store/bulk.py): databases still
    attached to a pooled SQLite connection, tables `_load_*` on PostgreSQL."""
    if db.dialect == "postgresql":
        return [name for (name,) in db.rows("SELECT tablename FROM pg_tables") if name.startswith("_load_")]
    with pooled_connections(db) as connections:
        return [name for c in connections for (_, name, _) in c.exec_driver_sql("PRAGMA database_list")
                if name not in ("main", "temp")]


# WhatsApp webhook bodies as Meta posts them, and their spool lines.
T0 = 1750030000


def status(pmid: str, st: str, ts: int, *, message_id: str | None = None, code: int | None = None,
           recipient: str | None = "16505551234", category: str | None = None) -> dict:
    obj: dict = {"id": pmid, "status": st, "timestamp": str(ts)}
    if recipient:
        obj["recipient_id"] = recipient
    if message_id:
        obj["biz_opaque_callback_data"] = message_id
    if code is not None:
        obj["errors"] = [{"code": code, "title": f"error {code}"}]
    if category:
        obj["pricing"] = {"type": "regular", "category": category}
    return obj


def inbound(sender: str, text: str, mid: str, ts: int = T0) -> dict:
    return {"from": sender, "id": mid, "timestamp": str(ts), "type": "text", "text": {"body": text}}


def body(statuses: list | None = None, messages: list | None = None) -> bytes:
    value: dict = {"messaging_product": "whatsapp"}
    if statuses:
        value["statuses"] = statuses
    if messages:
        value["messages"] = messages
    return json.dumps({"object": "whatsapp_business_account",
                       "entry": [{"id": "W", "changes": [{"field": "messages", "value": value}]}]}).encode()


def line(payload: bytes) -> bytes:
    return encode_record("whatsapp", payload, datetime(2025, 6, 16, tzinfo=UTC))
