"""The bulk ingest path (DuckDB SQL) against the reference parser (Python, per event): same rows.

Every test ingests the same spool twice, once with `bulk=True` and once with `bulk=False` (each into a store of
its own, on SQLite and on PostgreSQL), and compares every table the receipts stage writes.
"""

from __future__ import annotations

import json
import random
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from pipeline import store
from pipeline.channels.whatsapp_webhooks import bulk_statuses_sql
from pipeline.receipts.event_ids import EVENT_ID_SQL, event_id
from pipeline.receipts.ingest import ingest_spool
from pipeline.receipts.spool import encode_record
from pipeline.receipts.unmatched import COLUMNS
from pipeline.records import Receipt
from tests.helpers.receipts import add_messages, second_store
from tests.helpers.whatsapp import envelope

T0 = 1750030000
RECEIVED = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
TABLES = {
    # Every receipt stored, whether it names a message of the outbox or is kept apart until one appears; without
    # `seq`, the order in which the store numbered them.
    "events": f"SELECT {COLUMNS} FROM events UNION ALL SELECT {COLUMNS} FROM unmatched_events",
    "unmatched_events": f"SELECT {COLUMNS} FROM unmatched_events",
    "inbound": "SELECT * FROM inbound",
    "quarantine": "SELECT * FROM quarantine",
    "suppressions": "SELECT * FROM suppressions",
    "spool_files": "SELECT name, bytes, events FROM spool_files",
}


def st(pmid: str, status: str = "delivered", ts: object = None, **extra: object) -> dict:
    obj = {"id": pmid, "status": status, "timestamp": str(T0) if ts is None else ts, "recipient_id": "16505551234",
           "biz_opaque_callback_data": f"msg-{pmid}"}
    obj.update(extra)
    return {k: v for k, v in obj.items() if v is not ...}


def failed(pmid: str, code: object, **extra: object) -> dict:
    return st(pmid, "failed", errors=[{"code": code, "title": f"error {code}", "message": "m",
                                       "error_data": {"details": "d"}}], **extra)


def dumps(doc: object) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def rec(body: bytes | dict, n: int = 0) -> bytes:
    raw = dumps(body) if isinstance(body, dict) else body
    return encode_record("whatsapp", raw, RECEIVED + timedelta(milliseconds=n))


def legacy(body: bytes | dict, n: int = 0) -> bytes:
    """The pre-v2 JSON record format (still written for bodies that are not UTF-8 or hold a newline)."""
    raw = dumps(body) if isinstance(body, dict) else body
    return json.dumps({"provider": "whatsapp", "received_at": (RECEIVED + timedelta(milliseconds=n)).isoformat(),
                       "body": raw.decode("utf-8", errors="surrogateescape")}).encode()


def mixed_groups() -> tuple[list[bytes], list[bytes], list[bytes]]:
    """Receipts (plain and every odd case we know of), inbound STOPs, and malformed lines."""
    ok = [
        # a read, its delivered and sent posted later (out of order), pricing on sent
        rec(envelope([st("A", "read", str(T0 + 30))]), 1),
        rec(envelope([st("A", "delivered", str(T0 + 20)),
                      st("A", "sent", str(T0), pricing={"billable": True, "pricing_model": "PMP", "type": "regular",
                                                        "category": "marketing"},
                         conversation={"id": "c1", "expiration_timestamp": str(T0 + 86400),
                                       "origin": {"type": "marketing"}})]), 2),
        rec(envelope([failed("B", 131050), failed("C", "131026"), failed("D", 131050, recipient_id=...)]), 3),
        rec(envelope([st("E", "played", T0 + 5), st("F", "sent", 1750030001, pricing=None),
                      st("G", "sent", pricing={}, biz_opaque_callback_data=""),
                      st("H", "sent", biz_opaque_callback_data=42), st("I", "sent", recipient_id=None)]), 4),
        rec(envelope([st("J", "failed", errors=[{"code": 131050, "title": "", "message": "from message"}],
                         recipient_id="+34 600-111-222"),
                      st("K", "failed", errors=[]), st("L", "failed", errors=[{"code": None, "title": None}]),
                      st("M", "failed", errors=[{"message": "only a message"}])]), 5),
        # unicode, escapes, emoji, control characters, slashes and big integers inside a status
        rec(envelope([st("N", "sent", errors=None, note="退订 ✓ 😀 \"q\" \\ / \u0001\t\u2028\u007f",
                         big=123456789012345678901234567890, neg=-5, flag=False, nothing=None, arr=[1, [2, {}]])]), 6),
        # floats and NaN/Infinity where only raw_json sees them
        rec(b'{"object":"whatsapp_business_account","entry":[{"changes":[{"field":"messages","value":{"statuses":'
            b'[{"id":"O","status":"sent","timestamp":"1750030000","x":1.5e-7,"y":1e5,"z":[0.1,-0.0,1e400,2.5E+3],'
            b'"w":NaN,"v":-Infinity,"u":12345678901234567890}]}}]}]}', 7),
        # duplicate keys: the first wins for fields, raw_json keeps both
        rec(b'{"object":"whatsapp_business_account","entry":[{"changes":[{"field":"messages","value":{"statuses":'
            b'[{"id":"P","status":"sent","status":"read","timestamp":"1750030000","pricing":{"category":"utility",'
            b'"category":"marketing"}}]}}]}],"object":"other"}', 8),
        # whitespace, several entries and changes, a change of another field next to statuses
        rec(b' {"object" : "whatsapp_business_account", "entry" : [ {"changes": [ {"field": "messages", "value":'
            b' {"statuses": [ {"id": "Q", "status": "sent", "timestamp": 1750030009} ] } } ] },'
            b' {"changes": [{"field": "messages", "value": {"statuses": [{"id": "R", "status": "read",'
            b' "timestamp": "1750030010"}]}}]} ] } ', 9),
        rec(envelope([st("S", "sent")], extra_changes=[{"field": "message_template_status_update",
                                                        "value": {"event": "PAUSED"}}]), 10),
        rec(envelope(field="message_template_status_update"), 11),
        rec(envelope([st("T", "sent")], field=None), 12),  # field null: skipped by parse_webhook
        rec(b'{"object":"whatsapp_business_account","entry":[{"changes":[{"value":{"statuses":'
            b'[{"id":"U","status":"sent","timestamp":"1750030000"}]}}]}]}', 13),  # no field: messages
        rec(envelope([]), 14), rec(envelope(None), 15),
        # Meta's retry of an earlier POST (a later received_at), and the same receipt with more fields
        rec(envelope([st("A", "read", str(T0 + 30))]), 16),
        rec(envelope([st("V", "sent", pricing={"category": "utility", "type": "regular"})]), 17),
        rec(envelope([st("V", "sent")]), 18),
        legacy(envelope([st("W", "delivered")]), 19),
    ]
    inbound = [
        rec(envelope(messages=[{"from": "16505559999", "id": "wamid.in1", "timestamp": str(T0), "type": "text",
                                "text": {"body": " STOP "}}]), 20),
        rec(envelope([failed("X", 131050)], messages=[
            {"from": "447700900123", "id": "wamid.in2", "timestamp": str(T0 + 1), "type": "text",
             "text": {"body": "退订"}}]), 21),
    ]
    bad = [
        b"{torn", b"", b"   ", b"v2 garbage", rec(b"not json", 30), rec(b'{"object":"page","entry":[]}', 31),
        rec(b'{"object":"whatsapp_business_account","entry":[{"changes":[{"field":"messages","value":{"statuses":'
            b'[{"id":"Y","status":"sent","timestamp":"1750030000"},]}}]}]}', 32),  # trailing comma
        rec(envelope([st("Z1", "exploded")]), 33), rec(envelope([st("Z2", "sent", "yesterday")]), 34),
        rec(envelope([st("Z3", "sent", 1.5)]), 35), rec(envelope([st("Z4", "sent", True)]), 36),
        rec(envelope([st("Z5", "sent", pricing="cheap")]), 37), rec(envelope([st("", "sent")]), 38),
        rec(envelope([st("Z6", "sent", recipient_id=16505551234)]), 39),
        rec(envelope([st("Z7", "failed", errors=[{"code": 1.5}])]), 40),
        rec(envelope([st("Z8", "failed", errors=["x"])]), 41),
        rec(envelope([st("Z9", "sent", pricing={"category": 5})]), 42),
        rec(envelope(["not an object"]), 43), rec(envelope({"id": "x"}), 44),  # type: ignore[arg-type]
        rec(b'{"object":"whatsapp_business_account","entry":{"changes":[]}}', 45),
        rec(b'{"object":"whatsapp_business_account","entry":[5]}', 46),
        rec(b'{"object":"whatsapp_business_account","entry":[{"changes":[{"field":"messages"}]}]}', 47),
        rec(b'{"object":"whatsapp_business_account","entry":[{"changes":[{"field":"messages","value":{"statuses":'
            b'[{"id":"\\ud800","status":"sent","timestamp":"1750030000"}]}}]}]}', 48),  # lone surrogate
        rec(b"\xff\xfe not utf-8", 49),  # written as a JSON record: the body is not UTF-8
        rec(b'{"object":\n"whatsapp_business_account","entry":[]}', 50),  # a newline: JSON record, valid
        encode_record("carrier-pigeon", dumps(envelope([st("P1")]))),
        b"v2 2026-13-45T99:00:00.000000Z whatsapp " + dumps(envelope([st("Z10")])),
        b"v2 2026-11-25 10:00:00.000000Z whatsapp " + dumps(envelope([st("Z11")])),
    ]
    return ok, inbound, bad


def mixed_lines() -> list[bytes]:
    ok, inbound, bad = mixed_groups()
    return ok + inbound + bad


def write(spool: Path, files: list[list[bytes]]) -> None:
    spool.mkdir(parents=True, exist_ok=True)
    for i, lines in enumerate(files):
        (spool / f"spool-20261125T100000.000000Z-{i:06d}.jsonl").write_bytes(b"".join(x + b"\n" for x in lines))


def tables(db: store.Store) -> dict[str, list[tuple]]:
    return {name: sorted((tuple(r) for r in db.rows(sql)), key=repr) for name, sql in TABLES.items()}


def both(db: store.Store, request: pytest.FixtureRequest, tmp_path: Path, files: list[list[bytes]],
         **kwargs: object) -> tuple[dict, dict]:
    """Ingests the same spool with the bulk parser into `db` and with the reference parser into a second store of
    its backend; returns both sets of tables."""
    out = []
    with second_store(db, tmp_path, request) as reference:
        for bulk, into in ((True, db), (False, reference)):
            spool = tmp_path / f"spool-{bulk}"
            write(spool, files)
            add_messages(into, "msg-D", recipient="+4915112345678")
            ingest_spool(into, spool, bulk=bulk, **kwargs)  # type: ignore[arg-type]
            out.append(tables(into))
    return out[0], out[1]


def test_bulk_and_reference_parser_write_identical_rows(
    db: store.Store, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    lines = mixed_lines()
    bulk, reference = both(db, request, tmp_path, [lines[:12], lines[12:25], lines[25:]])
    for name in TABLES:
        assert bulk[name] == reference[name], name
    events = {r[2]: r for r in bulk["events"]}  # by provider_message_id
    assert len(bulk["events"]) > 25 and len(bulk["quarantine"]) >= 15
    assert events["P"][4] == "sent" and events["P"][7] == "utility"  # first of duplicate keys
    assert '"status":"sent","status":"read"' in events["P"][12]
    assert '"x":1.5e-7,"y":100000.0,"z":[0.1,-0.0,1e400,2500.0],"w":NaN,"v":-Infinity' in events["O"][12]
    assert events["E"][4] == "read" and events["J"][6] == "from message"
    # Of two copies of one receipt the first seen is kept: V's has pricing, A's read is Meta's first try.
    assert events["V"][7] == "utility"
    read_a = next(r for r in bulk["events"] if r[2] == "A" and r[4] == "read")
    assert store.utc(read_a[11]) == RECEIVED + timedelta(milliseconds=1)
    assert "Q" in events and "R" in events and "S" in events and "U" in events and "T" not in events
    assert {r[1] for r in bulk["suppressions"]} == {"+16505551234", "+34600111222", "+16505559999",
                                                   "+447700900123", "+4915112345678"}


def test_bulk_path_parses_the_plain_lines_itself(tmp_path: Path) -> None:
    """The comparison above is only worth something if the SQL, not the fallback, did the work."""
    ok, inbound, bad = mixed_groups()
    lines = ok + inbound + bad
    con = duckdb.connect()
    con.register("lines", pa.table({
        "file_idx": pa.array([0] * len(lines), pa.int32()),
        "line_no": pa.array(range(1, len(lines) + 1), pa.int32()),
        "line": pa.array([x.decode("utf-8", errors="replace") for x in lines], pa.large_string()),
    }))
    rows = con.execute(f"SELECT line_no, ok, provider_message_id FROM ({bulk_statuses_sql('lines')})").fetchall()
    parsed = {pmid for _, is_ok, pmid in rows if is_ok}
    assert parsed >= {"A", "B", "C", "D", "E", "F", "G", "H", "I", "J", "K", "L", "M", "N", "O", "P", "Q", "R", "S",
                      "V"}
    # Inbound replies and every odd or malformed line are left to the reference parser.
    assert not any(is_ok for n, is_ok, _ in rows if n > len(ok))
    assert {len(ok) + 1, len(ok) + 2} <= {n for n, is_ok, _ in rows if not is_ok}


def test_random_status_objects_agree(db: store.Store, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    rng = random.Random(20261125)
    values: list[object] = ["x", "", "sent", "read", "131050", 131050, -1, 0, 1.25, 1e-9, True, False, None,
                            [], {}, ["a"], {"k": "v"}, "ü\u0000", 10**20, "1750030000", 1750030000]
    keys = ["id", "status", "timestamp", "recipient_id", "biz_opaque_callback_data", "pricing", "errors", "other"]
    lines = []
    for n in range(300):
        status = st(f"r{n}", rng.choice(["sent", "delivered", "read", "failed", "played"]))
        for _ in range(rng.randrange(0, 3)):
            key = rng.choice(keys)
            if key == "pricing":
                status[key] = rng.choice([{"category": rng.choice(values), "type": rng.choice(values)}, None, "p", {}])
            elif key == "errors":
                status[key] = rng.choice([[{"code": rng.choice(values), "title": rng.choice(values),
                                            "message": rng.choice(values)}], [], None, "e", [None]])
            else:
                status[key] = rng.choice(values)
        lines.append(rec(envelope([status]), n))
    bulk, reference = both(db, request, tmp_path, [lines[:150], lines[150:]])
    for name in TABLES:
        assert bulk[name] == reference[name], name
    assert len(bulk["events"]) > 100 and len(bulk["quarantine"]) > 30


@pytest.mark.parametrize("batch_bytes", [1, 10**9])
def test_batches_and_replays_agree(
    db: store.Store, request: pytest.FixtureRequest, tmp_path: Path, batch_bytes: int
) -> None:
    lines = mixed_lines()
    files = [lines[i:i + 7] for i in range(0, len(lines), 7)]
    bulk, reference = both(db, request, tmp_path, files, batch_bytes=batch_bytes)
    assert bulk == reference
    db.execute("DELETE FROM spool_files")
    replay = ingest_spool(db, tmp_path / "spool-True", batch_bytes=batch_bytes)
    assert (replay.events_added, replay.unmatched, replay.inbound_added, replay.suppressions_added) == (0, 0, 0, 0)
    shutil.copy(tmp_path / "spool-True" / "spool-20261125T100000.000000Z-000000.jsonl",
                tmp_path / "spool-True" / "spool-20261125T100001.000000Z-000099.jsonl")
    assert ingest_spool(db, tmp_path / "spool-True").events_added == 0
    after = tables(db)
    assert {t: after[t] for t in TABLES if t != "spool_files"} == {t: bulk[t] for t in TABLES if t != "spool_files"}


@pytest.mark.parametrize("occurred", [datetime(2025, 6, 15, 23, 27, 53, tzinfo=UTC),
                                      datetime(2025, 6, 15, 23, 27, 53, 120, tzinfo=UTC),
                                      datetime(1970, 1, 1, tzinfo=UTC)])
def test_event_id_sql_matches_python(occurred: datetime) -> None:
    receipt = Receipt(provider="whatsapp", provider_message_id="wamid.ü1", message_id=None, status="failed",
                      error_code="131050", occurred_at=occurred, raw_json="{}")
    con = duckdb.connect()
    got = con.execute(f"SELECT {EVENT_ID_SQL} FROM (SELECT ? AS provider, ? AS provider_message_id, ? AS status,"
                      " ?::TIMESTAMPTZ AS occurred_at, ? AS error_code)",
                      ["whatsapp", "wamid.ü1", "failed", occurred, "131050"]).fetchall()
    assert got == [(event_id(receipt),)]
    no_code = receipt.model_copy(update={"error_code": None})
    got = con.execute(f"SELECT {EVENT_ID_SQL} FROM (SELECT 'whatsapp' AS provider, 'wamid.ü1' AS provider_message_id,"
                      " 'failed' AS status, ?::TIMESTAMPTZ AS occurred_at, NULL AS error_code)", [occurred]).fetchall()
    assert got == [(event_id(no_code),)]


def _left_beside(db: store.Store, scratch: Path) -> list[str]:
    """Copies of receipts still staged beside the store: scratch files (SQLite), unlogged tables (PostgreSQL)."""
    if db.dialect == "sqlite":
        return sorted(p.name for p in scratch.glob("campaign-load-*"))
    return [name for (name,) in db.rows("SELECT tablename FROM pg_tables WHERE tablename LIKE '\\_load\\_%'")]


def test_a_failed_write_leaves_no_staged_copy_and_the_next_ingest_adds_everything(
    db: store.Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One file per batch: while the first batch is written, the next is parsed and copied beside the store. The
    # write fails (a statement over a table that does not exist); neither batch's copy may stay behind.
    import tempfile

    from pipeline.receipts import unmatched

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    lines = [rec(envelope([st(f"k{n}"), st(f"k{n}", "read", ts=str(T0 + 5))]), n) for n in range(40)]
    write(tmp_path / "spool", [lines[:20], lines[20:]])
    for n in range(40):
        add_messages(db, f"msg-k{n}")
    broken = (f"INSERT INTO no_such_table ({COLUMNS}) SELECT {COLUMNS} FROM {{stage}} WHERE {{chunk}}",) * 2
    with monkeypatch.context() as patched:
        patched.setattr(unmatched, "SPLIT_SQL", broken)
        with pytest.raises(Exception, match="no_such_table"):
            ingest_spool(db, tmp_path / "spool", batch_bytes=1)
    assert _left_beside(db, scratch) == []
    assert db.scalar("SELECT count(*) FROM events") == 0
    again = ingest_spool(db, tmp_path / "spool", batch_bytes=1)
    assert (again.files, again.events_added) == (2, 80)
    assert _left_beside(db, scratch) == []
