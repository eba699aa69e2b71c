"""The points ledger: prepaid ChatApp points (1 point = USD 0.0001), the new-customer trial credit used first.

Append-only. Credits are `trial` (100,000 points, once) and `paid` (resource plans); a campaign's charge is
settled from the trial credit first, then paid points, and what no credit covers is `unfunded` (billed
pay-as-you-go). Re-settling after late receipts appends only the difference, so the ledger stays an audit trail.
Plan expiry (12 months) is not modelled.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import Connection

from pipeline.costs.pricing import POINT_USD, serialise
from pipeline.store import Store, run

TRIAL_POINTS = Decimal(100_000)
TRIAL_ENTRY = "trial-credit"
BUCKETS = ("trial", "paid", "unfunded")  # the order a charge consumes them in
_CENT = Decimal("0.01")
_LEDGER_LOCK = 0x706F696E  # "poin": PostgreSQL advisory lock of settlements (one balance, read then charged)
_CREDIT = """INSERT INTO points_ledger (entry_id, booked_at, kind, bucket, points, campaign_id, note)
VALUES (:entry_id, :at, 'credit', :bucket, :points, NULL, :note) ON CONFLICT (entry_id) DO NOTHING"""


def usd_to_points(usd: Decimal) -> Decimal:
    return (Decimal(usd) / POINT_USD).quantize(_CENT)


def grant_trial_credit(db: Store, *, at: datetime | None = None) -> bool:
    """Credits the new-customer trial once per store; returns whether it was added now."""
    return db.execute(_CREDIT, entry_id=TRIAL_ENTRY, at=at or datetime.now(UTC), bucket="trial",
                      points=TRIAL_POINTS, note="new-customer trial credit") == 1


def add_points(db: Store, points: Decimal | int, *, entry_id: str, note: str = "resource plan",
               at: datetime | None = None) -> None:
    """A purchased resource plan; `entry_id` (e.g. the order number) makes a repeated call harmless."""
    if Decimal(points) <= 0:
        raise ValueError("a credit must be positive")
    db.execute(_CREDIT, entry_id=entry_id, at=at or datetime.now(UTC), bucket="paid", points=Decimal(points),
               note=note)


def balances(db: Store) -> dict[str, Decimal]:
    """Points left per bucket (unfunded: points used beyond every credit, as a positive number)."""
    with db.read() as conn:
        return _balances(conn)


def campaign_points(db: Store, campaign_id: str) -> dict[str, Decimal]:
    """Points charged to a campaign so far, per bucket, and in total."""
    with db.read() as conn:
        return _campaign_points(conn, campaign_id)


def _sums(conn: Connection, where: str, **params: object) -> dict[str, Decimal]:
    # Summed here over exact decimals: SQLite keeps the amounts as text and would sum them as floats.
    sums: dict[str, Decimal] = {}
    for bucket, points in run(conn, f"SELECT bucket, points FROM points_ledger {where}", **params):
        sums[bucket] = sums.get(bucket, Decimal(0)) + Decimal(str(points))
    return sums


def _balances(conn: Connection) -> dict[str, Decimal]:
    rows = _sums(conn, "")
    out = {b: rows.get(b, Decimal(0)) for b in ("trial", "paid")}
    out["unfunded"] = -rows.get("unfunded", Decimal(0))
    return out


def _campaign_points(conn: Connection, campaign_id: str) -> dict[str, Decimal]:
    rows = _sums(conn, "WHERE kind = 'charge' AND campaign_id = :c", c=campaign_id)
    used = {b: -rows.get(b, Decimal(0)) for b in BUCKETS}
    used["total"] = sum(used.values(), Decimal(0))
    return used


def settle_campaign(db: Store, campaign_id: str, points_due: Decimal,
                    *, at: datetime | None = None) -> dict[str, Decimal]:
    """Charges the campaign up to `points_due` (its actual cost in points): the difference to what was
    charged before, trial credit first, then paid points, then unfunded; a lower cost refunds in reverse.
    Returns the campaign's points per bucket after settling."""
    at = at or datetime.now(UTC)
    grant_trial_credit(db, at=at)
    due = Decimal(points_due).quantize(_CENT)
    with db.write() as conn:
        serialise(conn, _LEDGER_LOCK)  # balances read and charged by one settlement at a time
        charged = _campaign_points(conn, campaign_id)
        delta = due - charged["total"]
        moves: list[tuple[str, Decimal]] = []
        if delta > 0:
            left = _balances(conn)
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
        seq = run(conn, "SELECT count(*) FROM points_ledger WHERE campaign_id = :c", c=campaign_id).scalar()
        for i, (bucket, points) in enumerate(moves):
            run(conn, """INSERT INTO points_ledger (entry_id, booked_at, kind, bucket, points, campaign_id, note)
                         VALUES (:entry_id, :at, 'charge', :bucket, :points, :c, :note)""",
                entry_id=f"{campaign_id}:{seq + i}", at=at, bucket=bucket, points=points, c=campaign_id,
                note=f"campaign cost settled at {due} points")
        return _campaign_points(conn, campaign_id)
