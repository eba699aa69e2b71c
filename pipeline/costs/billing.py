"""The billing facts: receipts folded per message (`billing_messages`, the `message_status` view as a table)
and every campaign's messages counted per price key (`billing_groups`), kept in step before each report.

Why tables: over 10M messages, deriving statuses through the view (a GROUP BY over every event, then a join
on string ids) takes seconds per report; reports read the group rows (hundreds to thousands) instead.

Both are kept in the store, with portable SQL, in short write transactions (a dispatcher sharing the store
never waits long for a report):
- Receipts are folded in incrementally: events are append-only and numbered (`events.seq`), so a watermark
  finds the new ones, folded FOLD_EVENTS at a time. The last WINDOW events below the watermark are counted
  again each time: more than were folded (on PostgreSQL a transaction can commit a lower seq after a higher
  one) folds them again, which changes nothing for those already in (the fold is max / min per message);
  fewer (receipts deleted: never done, but possible) rebuilds the fold.
- A campaign is counted again (reports/cost_report.sql: its outbox rows joined with the fold, in the store) when
  new receipts touched it (the fold marks its `billing_sync` row stale) or its outbox rows changed (triggers mark
  it in `billing_changes`, in the writer's own transaction: nothing scans the outbox to find out, migration
  0002). The count runs in a read snapshot and is written only if no later count of the same campaign took over.
- A recount costs time in proportion to the campaign (on SQLite ~10 us a message: a key lookup per message), and
  a campaign being sent changes all the time. So a campaign whose outbox changed again within
  RECOUNT_IN_FLIGHT_S of a count that was itself caused by an outbox change (it keeps changing: a dispatch, a
  retry) is counted again by a refresh of every campaign (a period bill, the volume tiers) only once that count
  is RECOUNT_IN_FLIGHT_S old. Receipts always count again at once, and so does the refresh of the campaign itself
  (its own report).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pipeline.store import Store, run, run_many, utc

GROUPS_SQL = Path(__file__).resolve().parents[2] / "reports" / "cost_report.sql"
FOLD_EVENTS = 200_000  # events per write transaction of the fold
WINDOW = 50_000  # events below the watermark counted again at each refresh
COUNTED = "counted"  # billing_sync.fingerprint of a campaign whose groups are current
CHANGING = "counted while changing"  # ... current, its outbox having changed again soon after the count before
DONE = (COUNTED, CHANGING)
STALE = "stale"  # ... of a campaign new receipts touched since it was counted
RECOUNT_IN_FLIGHT_S = 30.0  # how often other reports count a campaign whose outbox keeps changing


def _greatest(column: str) -> str:
    # greatest() ignoring NULLs, as PostgreSQL's and DuckDB's do (SQLite's max(a, b) returns NULL).
    return (f"{column} = CASE WHEN excluded.{column} IS NULL OR billing_messages.{column} >= excluded.{column} "
            f"THEN billing_messages.{column} ELSE excluded.{column} END")


# Folding is associative (max / min per message), so a batch of new receipts merges into what is stored.
_FOLD = f"""
INSERT INTO billing_messages (message_id, status_rank, billed_category, pricing_type, receipt_error, error_title,
                              delivered_at)
SELECT message_id,
    max(CASE status WHEN 'failed' THEN 9 WHEN 'read' THEN 3 WHEN 'delivered' THEN 2 WHEN 'sent' THEN 1 ELSE 0 END),
    -- Receipts spell 'authentication-international' with a hyphen or an underscore.
    max(replace(category, '-', '_')),
    max(pricing_type),
    max(CASE WHEN status = 'failed' THEN error_code END),
    max(CASE WHEN status = 'failed' THEN error_title END),
    min(CASE WHEN status IN ('delivered', 'read') THEN occurred_at END)
FROM events
WHERE seq > :low AND seq <= :high AND message_id IS NOT NULL
GROUP BY message_id
ON CONFLICT (message_id) DO UPDATE SET
    {_greatest('status_rank')}, {_greatest('billed_category')}, {_greatest('pricing_type')},
    {_greatest('receipt_error')}, {_greatest('error_title')},
    delivered_at = CASE WHEN excluded.delivered_at IS NULL OR billing_messages.delivered_at <= excluded.delivered_at
                        THEN billing_messages.delivered_at ELSE excluded.delivered_at END
"""
# A campaign never counted is pending anyway (its outbox rows' insert marked it in billing_changes).
_TOUCHED = f"""
UPDATE billing_sync SET fingerprint = '{STALE}'
WHERE source IN (SELECT 'outbox:' || o.campaign_id FROM outbox AS o
                 WHERE o.message_id IN (SELECT e.message_id FROM events AS e
                                        WHERE e.seq > :low AND e.seq <= :high AND e.message_id IS NOT NULL))
"""
_COUNT = "SELECT count(*) FROM events WHERE seq > :low AND seq <= :high"
# The UTC calendar day of a timestamp: SQLite keeps UTC text, PostgreSQL a timestamptz.
_UTC_DAY = {"sqlite": "substr({x}, 1, 10)", "postgresql": "CAST(({x}) AT TIME ZONE 'UTC' AS DATE)"}


def refresh_billing(db: Store, campaign_id: str | None = None) -> dict[str, int]:
    """Brings the billing tables up to date for every receipt and one campaign's (or every campaign's) outbox;
    cheap when nothing changed. Returns counts: receipts folded, campaigns counted again."""
    events = _sync_events(db)
    regrouped = sum(_regroup(db, cid) for cid in _pending(db, campaign_id))
    return {"events": events, "regrouped": regrouped}


def _sync_events(db: Store) -> int:
    folded = 0
    while True:
        state = db.rows("SELECT position, row_count FROM billing_sync WHERE source = 'events'")
        position, window = (int(state[0][0]), int(state[0][1])) if state else (0, 0)
        high = int(db.scalar("SELECT coalesce(max(seq), 0) FROM events"))
        start = position
        if position > 0:
            recount = int(db.scalar(_COUNT, low=max(0, position - WINDOW), high=position))
            if recount < window or high < position:
                _reset(db)  # receipts vanished below the watermark: it cannot be trusted; fold all again
                continue
            if recount > window:
                start = max(0, position - WINDOW)  # receipts committed below the watermark since: fold again
        if high <= start:
            return folded
        upto = min(high, start + FOLD_EVENTS)
        with db.write() as conn:
            run(conn, "INSERT INTO billing_sync (source, position, row_count) VALUES ('events', 0, 0) "
                      "ON CONFLICT (source) DO NOTHING")
            # Claims the slice: a refresh running at the same time that got there first has moved the watermark.
            moved = run(conn, "UPDATE billing_sync SET position = :upto, synced_at = :now "
                              "WHERE source = 'events' AND position = :position",
                        upto=upto, now=datetime.now(UTC), position=position).rowcount
            if moved == 1:
                run(conn, _FOLD, low=start, high=upto)
                run(conn, _TOUCHED, low=start, high=upto)
                folded += run(conn, _COUNT, low=start, high=upto).scalar()
                run(conn, "UPDATE billing_sync SET row_count = :n WHERE source = 'events'",
                    n=run(conn, _COUNT, low=max(0, upto - WINDOW), high=upto).scalar())


def _reset(db: Store) -> None:
    with db.write() as conn:
        run(conn, "DELETE FROM billing_messages")
        run(conn, "DELETE FROM billing_sync WHERE source = 'events'")
        run(conn, f"UPDATE billing_sync SET fingerprint = '{STALE}' WHERE source LIKE 'outbox:%'")


def _pending(db: Store, campaign_id: str | None) -> list[str]:
    """The campaigns to count again: receipts touched them, their last count did not finish (a crash, or one in
    progress elsewhere), or their outbox changed (for a refresh of every campaign: unless it keeps changing and
    was counted lately)."""
    if campaign_id is not None:
        marked = db.scalar("SELECT count(*) FROM billing_changes WHERE campaign_id = :c", c=campaign_id)
        state = db.scalar("SELECT fingerprint FROM billing_sync WHERE source = :s", s=f"outbox:{campaign_id}")
        return [campaign_id] if marked or state not in (None, *DONE) else []
    pending = {r[0] for r in db.rows("SELECT substr(source, 8) FROM billing_sync WHERE source LIKE 'outbox:%' "
                                     "AND fingerprint NOT IN :done", done=list(DONE))}
    lately = datetime.now(UTC) - timedelta(seconds=RECOUNT_IN_FLIGHT_S)
    for cid, state, synced_at in db.rows("""
            SELECT c.campaign_id, s.fingerprint, s.synced_at FROM billing_changes AS c
            LEFT JOIN billing_sync AS s ON s.source = 'outbox:' || c.campaign_id"""):
        if state != CHANGING or synced_at is None or utc(synced_at) < lately:  # type: ignore[operator]
            pending.add(cid)
    return sorted(pending)


def _regroup(db: Store, campaign_id: str) -> int:
    """Counts one campaign again into billing_groups; returns 1 if this count was written."""
    source, token, now = f"outbox:{campaign_id}", uuid.uuid4().hex, datetime.now(UTC)
    with db.write() as conn:
        marked = run(conn, "DELETE FROM billing_changes WHERE campaign_id = :c", c=campaign_id).rowcount
        before = run(conn, "SELECT fingerprint, synced_at FROM billing_sync WHERE source = :s", s=source).first()
        run(conn, """INSERT INTO billing_sync (source, fingerprint, synced_at) VALUES (:s, :t, :now)
                     ON CONFLICT (source) DO UPDATE SET fingerprint = excluded.fingerprint,
                         synced_at = excluded.synced_at""", s=source, t=token, now=now)
    # Its outbox changed again soon after a count: it keeps changing (see the module's docstring).
    changing = bool(marked) and before is not None and before[0] in DONE and before[1] is not None \
        and utc(before[1]) >= now - timedelta(seconds=RECOUNT_IN_FLIGHT_S)  # type: ignore[operator]
    # Counted in a read snapshot that includes every change committed before the mark was cleared; a change
    # committed after marks the campaign again.
    sql = groups_sql(db, "o.campaign_id = :c")
    rows = [r._asdict() for r in db.rows(sql, c=campaign_id, chatapp_channel=chatapp_channel(db, campaign_id))]
    with db.write() as conn:
        mine = run(conn, "UPDATE billing_sync SET fingerprint = :done, synced_at = :now "
                         "WHERE source = :s AND fingerprint = :t",
                   done=CHANGING if changing else COUNTED, now=datetime.now(UTC), s=source, t=token).rowcount
        if mine != 1:
            return 0  # a later count of this campaign took over
        run(conn, "DELETE FROM billing_groups WHERE campaign_id = :c", c=campaign_id)
        if rows:
            columns = list(rows[0])
            run_many(conn, f"INSERT INTO billing_groups ({', '.join(_quoted(c) for c in columns)}) "
                           f"VALUES ({', '.join(':' + c for c in columns)})", rows)
        else:  # its outbox rows are gone: forget it
            run(conn, "DELETE FROM billing_sync WHERE source = :s", s=source)
    return 1


def groups_sql(db: Store, where: str) -> str:
    """reports/cost_report.sql in this store's dialect, counting the outbox rows (`o`) that `where` selects; binds
    :chatapp_channel and the parameters of `where`."""
    return GROUPS_SQL.read_text(encoding="utf-8").replace("{where}", where).replace(
        "{day}", _UTC_DAY[db.dialect].format(x="coalesce(o.sent_at, b.delivered_at, o.queued_at)"))


def _quoted(column: str) -> str:
    return f'"{column}"' if column == "read" else column


def chatapp_channel(db: Store, campaign_id: str) -> str:
    """The channel a ChatApp campaign sends on (its spec's provider.options.channel_type), else 'chatapp'."""
    spec = db.scalar("SELECT spec_json FROM campaigns WHERE campaign_id = :c", c=campaign_id)
    try:
        found = json.loads(spec or "{}")["provider"]["options"]["channel_type"]
    except (ValueError, KeyError, TypeError):
        return "chatapp"
    return found if isinstance(found, str) and found else "chatapp"
