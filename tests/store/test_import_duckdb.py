"""`campaign db import OLD.duckdb`: a ledger with the DuckDB version's schema (old_ledger.sql), filled with a small
campaign's worth of every table, copied into a new store on both backends: counts per table compared, values and
statuses as the old ledger had them, a repeated import adding nothing, and one-line errors for what is not a ledger."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from pipeline import store
from pipeline.cli.parser import main
from pipeline.store.import_duckdb import TABLES

SCHEMA = Path(__file__).with_name("old_ledger.sql")
MESSAGES = 240  # per campaign: two campaigns

# Rows as the DuckDB version wrote them: two campaigns, their recipients and rejects, outbox rows in every state with
# their transitions, receipts (one left unlinked, a few unmatched), replies, quarantined lines, spool files, opt-outs,
# prices, an estimate and points.
_ROWS = f"""
INSERT INTO campaigns VALUES
  ('fall', 'Fall sale', 'whatsapp', 'fall_v1', 'marketing', TIMESTAMPTZ '2026-10-01 09:00:00+00', '{{"a": 1}}'),
  ('otp', 'Codes', 'sms', 'otp_v2', 'authentication', TIMESTAMPTZ '2026-10-02 09:30:00+02', '{{}}');
INSERT INTO recipients
  SELECT c, i, '+4477009' || lpad(i::VARCHAR, 5, '0'), '+4477009' || lpad(i::VARCHAR, 5, '0'), 'GB', 'mobile',
         '{{"first_name": "Zoë"}}', 'Hi Zoë, ' || i
  FROM (VALUES ('fall'), ('otp')) t(c), range({MESSAGES}) r(i);
INSERT INTO rejects SELECT c, {MESSAGES} + i, 'invalid_number', 'row ' || i FROM (VALUES ('fall'), ('otp')) t(c),
  range(7) r(i);
INSERT INTO rejects VALUES ('fall', 9999, 'duplicate', NULL), ('fall', 9999, 'duplicate', NULL);
INSERT INTO outbox (message_id, campaign_id, seq, recipient_key, channel, sender, country, category, payload_json,
                    state, attempts, provider_message_id, error_code, error_detail, queued_at, sent_at, updated_at,
                    not_before, retryable, timezone, est_cost_usd, segments)
  SELECT c || '-' || i, c, i, '+4477009' || lpad(i::VARCHAR, 5, '0'), ch, 'sender-1', 'GB', cat, '{{"to": "x"}}',
         CASE WHEN i % 10 = 9 THEN 'queued' WHEN i % 10 = 8 THEN 'failed' WHEN i % 10 = 7 THEN 'deferred'
              WHEN i % 10 = 6 THEN 'unknown' ELSE 'sent' END,
         CASE WHEN i % 10 = 9 THEN 0 ELSE 1 END,
         CASE WHEN i % 10 < 7 THEN 'wamid.' || c || i END, CASE WHEN i % 10 = 8 THEN '131026' END,
         CASE WHEN i % 10 = 8 THEN 'Message undeliverable' END,
         TIMESTAMPTZ '2026-10-10 09:00:00+00' + INTERVAL (i) SECOND,
         CASE WHEN i % 10 < 7 THEN TIMESTAMPTZ '2026-10-10 10:00:00+00' + INTERVAL (i) SECOND END,
         TIMESTAMPTZ '2026-10-10 10:00:00+00' + INTERVAL (i) SECOND,
         CASE WHEN i % 10 = 7 THEN TIMESTAMPTZ '2026-10-11 10:00:00+00' END, i % 10 = 8, 'Europe/London',
         0.0123 + i / 1000000, CASE WHEN ch = 'sms' THEN 1 + i % 3 END
  FROM (VALUES ('fall', 'whatsapp', 'marketing'), ('otp', 'sms', 'authentication')) t(c, ch, cat),
       range({MESSAGES}) r(i);
INSERT INTO outbox_transitions
  SELECT campaign_id, seq, s, NULL, queued_at + INTERVAL (k) MINUTE
  FROM outbox, (VALUES (0, 'sending'), (1, 'sent')) t(k, s) WHERE state = 'sent';
INSERT INTO events
  SELECT md5(message_id || s), 'whatsapp', provider_message_id, message_id, s,
         CASE WHEN s = 'failed' THEN '131049' END, CASE WHEN s = 'failed' THEN 'Healthy ecosystem' END,
         'marketing', 'regular', recipient_key, sent_at + INTERVAL (k) MINUTE, sent_at + INTERVAL (k + 1) MINUTE,
         '{{"id": "' || provider_message_id || '", "status": "' || s || '"}}'
  FROM outbox, (VALUES (0, 'sent'), (1, 'delivered'), (2, 'read'), (3, 'failed')) t(k, s)
  WHERE campaign_id = 'fall' AND provider_message_id IS NOT NULL
    AND (k = 0 OR (k = 1 AND seq % 4 <> 1) OR (k = 2 AND seq % 3 = 0) OR (k = 3 AND seq % 10 = 5));
INSERT INTO events VALUES ('unlinked-1', 'whatsapp', 'wamid.elsewhere', NULL, 'sent', NULL, NULL, NULL, NULL, NULL,
  TIMESTAMPTZ '2026-10-10 11:00:00+00', NULL, '{{}}');
INSERT INTO unmatched_events
  SELECT 'unmatched-' || i, 'whatsapp', 'wamid.other' || i, NULL, 'delivered', NULL, NULL, NULL, NULL, '447700900999',
         TIMESTAMPTZ '2026-10-10 12:00:00+00' + INTERVAL (i) SECOND, NULL, '{{}}' FROM range(3) r(i);
INSERT INTO inbound SELECT 'in-' || i, 'whatsapp', '+447700900' || lpad(i::VARCHAR, 3, '0'), 'STOP',
  TIMESTAMPTZ '2026-10-10 13:00:00+00', '{{}}' FROM range(4) r(i);
INSERT INTO quarantine VALUES ('20261010-1.ndjson', 3, 'ValueError: not JSON', '{{oops'),
  ('20261010-1.ndjson', 9, 'KeyError: entry', '{{}}');
INSERT INTO spool_files SELECT '20261010-' || i || '.ndjson', 1000 * i, 10 * i, TIMESTAMPTZ '2026-10-10 14:00:00+00'
  FROM range(1, 4) r(i);
INSERT INTO suppressions SELECT 'whatsapp', '+447700900' || lpad(i::VARCHAR, 3, '0'), 'stop_reply', 'in-' || i,
  TIMESTAMPTZ '2026-10-10 13:00:00+00' FROM range(4) r(i);
INSERT INTO prices VALUES ('whatsapp', 'United Kingdom', 'marketing', 0.052900, 0.005000, DATE '2026-07-01', 'card'),
  ('sms', 'United Kingdom', 'authentication', 0.040000, 0.003000, DATE '2026-07-01', 'card');
INSERT INTO markets VALUES ('whatsapp', 'GB', 'United Kingdom', NULL), ('sms', 'GB', 'United Kingdom', 'UK');
INSERT INTO pricing_rules VALUES ('per_message', 'whatsapp', 'marketing', 'regular', true, 'marketing', 'delivered',
  false, DATE '2026-07-01', 'meta');
INSERT INTO service_fees VALUES ('whatsapp', 50.00, DATE '2026-07-01', 'chatapp');
INSERT INTO price_tiers VALUES
  ('whatsapp', 'United Kingdom', 'utility', 0, 100000, 0.020000, DATE '2026-07-01', 'card'),
  ('whatsapp', 'United Kingdom', 'utility', 100000, NULL, 0.018000, DATE '2026-07-01', 'card');
INSERT INTO cost_estimates VALUES ('fall', TIMESTAMPTZ '2026-10-09 08:00:00+00', DATE '2026-10-09', 'whatsapp', 'GB',
  'United Kingdom', 'marketing', 'regular', 216, NULL, 11.426400, 1.080000, 12.506400, 0);
INSERT INTO points_ledger VALUES ('topup-1', TIMESTAMPTZ '2026-10-01 08:00:00+00', 'top_up', 'main', 10000.00, NULL,
  'October'), ('fee-fall', TIMESTAMPTZ '2026-10-10 15:00:00+00', 'service_fee', 'main', -10.80, 'fall', NULL);
"""


def old_ledger(path: Path) -> Path:
    con = duckdb.connect(str(path))
    try:
        con.execute(SCHEMA.read_text())
        con.execute(_ROWS)
    finally:
        con.close()
    return path


def _counts(path: Path) -> dict[str, int]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}  # type: ignore[index]
    finally:
        con.close()


def _import(ledger: Path, url: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["db", "import", str(ledger), "--db", url])
    out = capsys.readouterr()
    return code, out.out, out.err


def _copied(out: str) -> dict[str, int]:
    """table -> rows copied, from the command's table."""
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] in TABLES:
            rows[parts[0]] = int(parts[2].replace(",", ""))
    return rows


def test_an_old_ledger_is_copied_whole_and_a_second_import_adds_nothing(
        db: store.Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ledger = old_ledger(tmp_path / "campaigns.duckdb")
    expected = _counts(ledger)
    assert all(expected[t] > 0 for t in TABLES), expected  # every table the import copies has rows to copy
    url = str(db.path) if db.path else db.url

    code, out, err = _import(ledger, url, capsys)
    assert (code, err) == (0, ""), out
    assert {t: db.scalar(f"SELECT count(*) FROM {t}") for t in TABLES} == expected
    assert _copied(out) == expected

    # The values as the ledger held them: order within a campaign, times, money, flags.
    row = db.rows("SELECT seq, state, sent_at, not_before, retryable, est_cost_usd, segments FROM outbox "
                  "WHERE message_id = 'otp-8'")[0]
    assert (row[0], row[1], row[2], row[4], row[6]) == (8, "failed", None, True, 3)
    assert str(row[5]).startswith("0.012308")
    assert store.utc(db.scalar("SELECT sent_at FROM outbox WHERE message_id = 'fall-3'")).isoformat() == \
        "2026-10-10T10:00:03+00:00"
    assert db.scalar("SELECT count(*) FROM outbox_transitions WHERE campaign_id = 'fall' AND seq = 0") == 2
    # Each message's status in the store is the one the old ledger's view gave.
    old = duckdb.connect(str(ledger), read_only=True)
    try:
        before = dict(old.execute("SELECT message_id, status FROM message_status").fetchall())
    finally:
        old.close()
    assert dict(db.rows("SELECT message_id, status FROM message_status")) == before
    assert {before[m] for m in before} == {"sent", "delivered", "read", "failed"}

    # Again, as after an import that was interrupted: nothing is copied twice.
    code, out, err = _import(ledger, url, capsys)
    assert (code, err) == (0, ""), out
    assert _copied(out) == dict.fromkeys(TABLES, 0)
    assert {t: db.scalar(f"SELECT count(*) FROM {t}") for t in TABLES} == expected


def test_what_is_not_a_ledger_gets_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = str(tmp_path / "campaigns.sqlite")
    missing = tmp_path / "nowhere.duckdb"
    code, out, err = _import(missing, url, capsys)
    assert (code, err) == (2, f"error: {missing}: no such DuckDB ledger\n")

    text = tmp_path / "notes.duckdb"
    text.write_text("phone,name\n+447700900123,Ann\n")
    code, out, err = _import(text, url, capsys)
    assert code == 2 and err.startswith(f"error: {text}: not a DuckDB ledger") and err.count("\n") == 1, err
