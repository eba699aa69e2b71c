"""The billing facts: receipts folded per message (`billing_messages`, the `message_status` view as a table)
and every campaign's messages counted per price key (`billing_groups`), kept in step before each report.

Why tables: over 10M messages, deriving statuses through the view (a GROUP BY over every event, then a join
on string ids) takes 4-9 s per report; reports read the few hundred group rows instead. Receipts are folded
in incrementally (events are append-only, so a rowid watermark finds the new ones; a count check catches
anything else and triggers a rebuild); a campaign is counted again (reports/cost_report.sql, one join of its
outbox rows with the fold) when receipts touched it or its outbox fingerprint changed.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from pipeline.store import scalar

GROUPS_SQL = Path(__file__).resolve().parents[2] / "reports" / "cost_report.sql"

# Folding is associative (max / min per message), so a batch of new receipts merges into what is stored.
_FOLD_EVENTS = """
CREATE OR REPLACE TEMP TABLE _receipt_fold AS
SELECT message_id,
    max(CASE status WHEN 'failed' THEN 9 WHEN 'read' THEN 3 WHEN 'delivered' THEN 2 WHEN 'sent' THEN 1 ELSE 0 END)
        ::TINYINT AS status_rank,
    -- Receipts spell 'authentication-international' with a hyphen or an underscore.
    max(replace(category, '-', '_')) AS billed_category,
    max(pricing_type) AS pricing_type,
    max(error_code) FILTER (WHERE status = 'failed') AS receipt_error,
    max(error_title) FILTER (WHERE status = 'failed') AS error_title,
    min(occurred_at) FILTER (WHERE status IN ('delivered', 'read')) AS delivered_at
FROM events
WHERE rowid > $low AND rowid <= $high AND message_id IS NOT NULL
GROUP BY message_id
"""
_MERGE_RECEIPTS = [
    """UPDATE billing_messages AS b SET
        status_rank = greatest(b.status_rank, r.status_rank),
        billed_category = greatest(b.billed_category, r.billed_category),
        pricing_type = greatest(b.pricing_type, r.pricing_type),
        receipt_error = greatest(b.receipt_error, r.receipt_error),
        error_title = greatest(b.error_title, r.error_title),
        delivered_at = least(b.delivered_at, r.delivered_at)
    FROM _receipt_fold AS r
    WHERE b.message_id = r.message_id""",
    """INSERT INTO billing_messages BY NAME
    SELECT r.* FROM _receipt_fold AS r
    WHERE NOT EXISTS (SELECT 1 FROM billing_messages AS b WHERE b.message_id = r.message_id)""",
]
_TOUCHED = """
SELECT DISTINCT campaign_id FROM outbox WHERE message_id IN (SELECT message_id FROM _receipt_fold)
"""
# Cheap (~0.1-0.2 s for 10M rows: no string hashing): the ledger stamps updated_at on every change, and a new
# or removed row, a send time or SMS parts show even without it.
_FINGERPRINTS = """
SELECT campaign_id, concat_ws(':', count(*), count(sent_at), sum(epoch_us(sent_at)), count(updated_at),
    sum(epoch_us(updated_at)), sum(segments))
FROM outbox {where}
GROUP BY campaign_id
"""


def refresh_billing(con: duckdb.DuckDBPyConnection, campaign_id: str | None = None) -> dict[str, int]:
    """Brings the billing tables up to date for every receipt and one campaign's (or every campaign's) outbox;
    cheap when nothing changed. Returns counts: receipts folded, campaigns counted again."""
    events, touched = _sync_events(con)
    changed, fingerprints = _outbox_changes(con, campaign_id)
    regroup = sorted((touched & fingerprints.keys()) | changed)
    sql = GROUPS_SQL.read_text(encoding="utf-8").replace("{where}", "o.campaign_id = $c")
    for cid in regroup:
        _write(con, [("DELETE FROM billing_groups WHERE campaign_id = $c", {"c": cid}),
                     (f"INSERT INTO billing_groups BY NAME {sql}", {"c": cid}),
                     ("INSERT OR REPLACE INTO billing_sync VALUES ('outbox:' || $c, NULL, NULL, $f, now())",
                      {"c": cid, "f": fingerprints[cid]})])
    # Campaigns touched by receipts but outside this refresh are counted again when they are reported.
    for cid in touched - fingerprints.keys():
        _write(con, [("UPDATE billing_sync SET fingerprint = 'stale' WHERE source = 'outbox:' || $c", {"c": cid})])
    return {"events": events, "regrouped": len(regroup)}


def _sync_events(con: duckdb.DuckDBPyConnection) -> tuple[int, set[str]]:
    state = con.execute("SELECT position, row_count FROM billing_sync WHERE source = 'events'").fetchall()
    low, folded = state[0] if state else (-1, 0)
    [(high, total)] = con.execute("SELECT coalesce(max(rowid), -1), count(*) FROM events").fetchall()
    reset: set[str] = set()
    if low >= 0 and scalar(con, "SELECT count(*) FROM events WHERE rowid <= ?", [low]) != folded:
        # Rows appeared below the watermark (or vanished): the watermark cannot be trusted; fold all again.
        reset = {c for (c,) in con.execute("SELECT DISTINCT campaign_id FROM billing_groups").fetchall()}
        _write(con, [("DELETE FROM billing_messages", {}), ("DELETE FROM billing_sync WHERE source = 'events'", {})])
        low, folded = -1, 0
    if high <= low:
        return 0, reset
    con.begin()
    try:
        con.execute(_FOLD_EVENTS, {"low": low, "high": high})
        for sql in _MERGE_RECEIPTS:
            con.execute(sql)
        touched = {c for (c,) in con.execute(_TOUCHED).fetchall()}
        con.execute("DROP TABLE _receipt_fold")
        con.execute("INSERT OR REPLACE INTO billing_sync VALUES ('events', ?, ?, NULL, now())", [high, total])
        con.commit()
    except BaseException:
        con.rollback()
        raise
    return total - folded, touched | reset


def _outbox_changes(con: duckdb.DuckDBPyConnection, campaign_id: str | None) -> tuple[set[str], dict[str, str]]:
    """(campaigns whose outbox changed since they were counted, current fingerprints); forgets campaigns
    whose outbox rows are gone."""
    where, params = ("WHERE campaign_id = $c", {"c": campaign_id}) if campaign_id is not None else ("", {})
    current = dict(con.execute(_FINGERPRINTS.format(where=where), params).fetchall())
    stored = dict(con.execute(
        "SELECT substr(source, 8), fingerprint FROM billing_sync WHERE source LIKE 'outbox:%'").fetchall())
    scope = stored.keys() if campaign_id is None else {campaign_id} & stored.keys()
    for gone in scope - current.keys():
        _write(con, [("DELETE FROM billing_groups WHERE campaign_id = $c", {"c": gone}),
                     ("DELETE FROM billing_sync WHERE source = 'outbox:' || $c", {"c": gone})])
    return {c for c, f in current.items() if stored.get(c) != f}, current


def _write(con: duckdb.DuckDBPyConnection, statements: list[tuple[str, dict[str, object]]]) -> None:
    con.begin()
    try:
        for sql, params in statements:
            con.execute(sql, params or None)
        con.commit()
    except BaseException:
        con.rollback()
        raise
