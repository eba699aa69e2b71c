"""The points ledger: prepaid ChatApp points (1 point = USD 0.0001), the new-customer trial credit used first.

Append-only. Credits are `trial` (100,000 points, once) and `paid` (resource plans); a campaign's charge is
settled from the trial credit first, then paid points, and what no credit covers is `unfunded` (billed
pay-as-you-go). Re-settling after late receipts appends only the difference, so the ledger stays an audit trail.
Plan expiry (12 months) is not modelled.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import duckdb

from pipeline.costs.pricing import POINT_USD

TRIAL_POINTS = Decimal(100_000)
TRIAL_ENTRY = "trial-credit"
BUCKETS = ("trial", "paid", "unfunded")  # the order a charge consumes them in
_CENT = Decimal("0.01")


def usd_to_points(usd: Decimal) -> Decimal:
    return (Decimal(usd) / POINT_USD).quantize(_CENT)


def grant_trial_credit(con: duckdb.DuckDBPyConnection, *, at: datetime | None = None) -> bool:
    """Credits the new-customer trial once per database; returns whether it was added now."""
    added = con.execute(
        "INSERT OR IGNORE INTO points_ledger VALUES (?, ?, 'credit', 'trial', ?, NULL, 'new-customer trial credit')",
        [TRIAL_ENTRY, at or datetime.now(UTC), TRIAL_POINTS],
    ).fetchall()
    return bool(added and added[0][0])


def add_points(con: duckdb.DuckDBPyConnection, points: Decimal | int, *, entry_id: str, note: str = "resource plan",
               at: datetime | None = None) -> None:
    """A purchased resource plan; `entry_id` (e.g. the order number) makes a repeated call harmless."""
    if Decimal(points) <= 0:
        raise ValueError("a credit must be positive")
    con.execute("INSERT OR IGNORE INTO points_ledger VALUES (?, ?, 'credit', 'paid', ?, NULL, ?)",
                [entry_id, at or datetime.now(UTC), Decimal(points), note])


def balances(con: duckdb.DuckDBPyConnection) -> dict[str, Decimal]:
    """Points left per bucket (unfunded: points used beyond every credit, as a positive number)."""
    rows = dict(con.execute("SELECT bucket, sum(points) FROM points_ledger GROUP BY bucket").fetchall())
    out = {b: Decimal(rows.get(b) or 0) for b in ("trial", "paid")}
    out["unfunded"] = -Decimal(rows.get("unfunded") or 0)
    return out


def campaign_points(con: duckdb.DuckDBPyConnection, campaign_id: str) -> dict[str, Decimal]:
    """Points charged to a campaign so far, per bucket, and in total."""
    rows = dict(con.execute(
        "SELECT bucket, -sum(points) FROM points_ledger WHERE kind = 'charge' AND campaign_id = ? GROUP BY bucket",
        [campaign_id]).fetchall())
    used = {b: Decimal(rows.get(b) or 0) for b in BUCKETS}
    used["total"] = sum(used.values(), Decimal(0))
    return used


def settle_campaign(con: duckdb.DuckDBPyConnection, campaign_id: str, points_due: Decimal,
                    *, at: datetime | None = None) -> dict[str, Decimal]:
    """Charges the campaign up to `points_due` (its actual cost in points): the difference to what was
    charged before, trial credit first, then paid points, then unfunded; a lower cost refunds in reverse.
    Returns the campaign's points per bucket after settling."""
    at = at or datetime.now(UTC)
    grant_trial_credit(con, at=at)
    due = Decimal(points_due).quantize(_CENT)
    con.begin()
    try:
        charged = campaign_points(con, campaign_id)
        delta = due - charged["total"]
        moves: list[tuple[str, Decimal]] = []
        if delta > 0:
            left = balances(con)
            for bucket in BUCKETS:
                take = delta if bucket == "unfunded" else min(delta, max(left[bucket], Decimal(0)))
                if take > 0:
                    moves.append((bucket, -take))
                    delta -= take
        elif delta < 0:
            refund = -delta
            for bucket in reversed(BUCKETS):  # give back what was least desirable to spend first
                back = min(refund, charged[bucket])
                if back > 0:
                    moves.append((bucket, back))
                    refund -= back
        seq = con.execute("SELECT count(*) FROM points_ledger WHERE campaign_id = ?", [campaign_id]).fetchall()[0][0]
        for i, (bucket, points) in enumerate(moves):
            con.execute("INSERT INTO points_ledger VALUES (?, ?, 'charge', ?, ?, ?, ?)",
                        [f"{campaign_id}:{seq + i}", at, bucket, points, campaign_id,
                         f"campaign cost settled at {due} points"])
        con.commit()
    except BaseException:
        con.rollback()
        raise
    return campaign_points(con, campaign_id)
