"""Receipts for tests: the real webhook receiver on loopback spooling to a folder (to follow receipts from a
sandbox through the spool into the store), hand-written spool files, and row counts."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from pipeline.receipts.receiver import create_receiver_app
from pipeline.receipts.routes import add_provider_routes
from pipeline.receipts.spool import encode_record
from pipeline.servers import serve_in_thread


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


def count(con: duckdb.DuckDBPyConnection, table: str) -> int:
    return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # type: ignore[index]


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
