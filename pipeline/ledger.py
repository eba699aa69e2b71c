"""The outbox ledger: claims messages before they are sent and records outcomes, in batches.

A message is marked `sending` (committed) before its request leaves, and its outcome is
recorded after; so after a crash every message is either still `queued` (never sent),
`sending` (in flight: reconciled from receipts), or has its outcome.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import duckdb
import polars as pl


@dataclass(frozen=True, slots=True)
class Pending:
    seq: int
    message_id: str
    payload_json: str
    attempts: int


OUTCOME_SCHEMA = {
    "seq": pl.Int64(),
    "state": pl.String(),
    "provider_message_id": pl.String(),
    "error_code": pl.String(),
    "error_detail": pl.String(),
    "sent_at": pl.Datetime("us", "UTC"),
    "attempts": pl.Int32(),
}


class Ledger:
    """All outbox writes of one dispatch; the caller serialises calls (one DuckDB writer)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, campaign_id: str) -> None:
        self.con = con
        self.campaign_id = campaign_id

    def reconcile_in_flight(self) -> tuple[int, int]:
        """Messages left `sending` by a crash: `sent` if a receipt carries our id, else `unknown`.

        Unknown ones are never resent automatically: the request may have reached the provider.
        """
        now = datetime.now(UTC)
        with_receipt = self.con.execute(
            """
            UPDATE outbox SET state = 'sent', provider_message_id = s.provider_message_id,
                   sent_at = coalesce(outbox.sent_at, s.first_at), updated_at = ?
            FROM (SELECT message_id, any_value(provider_message_id) AS provider_message_id,
                         min(occurred_at) AS first_at
                  FROM events WHERE message_id IS NOT NULL GROUP BY message_id) AS s
            WHERE outbox.campaign_id = ? AND outbox.state = 'sending' AND outbox.message_id = s.message_id
            """,
            [now, self.campaign_id],
        ).fetchall()
        unknown = self.con.execute(
            "UPDATE outbox SET state = 'unknown', updated_at = ? WHERE campaign_id = ? AND state = 'sending'",
            [now, self.campaign_id],
        ).fetchall()
        return with_receipt[0][0], unknown[0][0]

    def pending(self, after_seq: int, limit: int) -> list[Pending]:
        rows = self.con.execute(
            """
            SELECT seq, message_id, payload_json, attempts FROM outbox
            WHERE campaign_id = ? AND state = 'queued' AND seq > ?
            ORDER BY seq LIMIT ?
            """,
            [self.campaign_id, after_seq, limit],
        ).fetchall()
        return [Pending(*row) for row in rows]

    def claim(self, first_seq: int, last_seq: int) -> None:
        # `seq` grows in insertion order, so DuckDB's zone maps make this range update cheap.
        self.con.execute(
            """
            UPDATE outbox SET state = 'sending', attempts = attempts + 1, updated_at = ?
            WHERE campaign_id = ? AND state = 'queued' AND seq BETWEEN ? AND ?
            """,
            [datetime.now(UTC), self.campaign_id, first_seq, last_seq],
        )

    def release(self, seqs: list[int]) -> None:
        """Claimed but never sent (the channel stopped): back to the queue, attempt not counted."""
        if not seqs:
            return
        self.con.execute(
            """
            UPDATE outbox SET state = 'queued', attempts = greatest(attempts - 1, 0), updated_at = ?
            WHERE campaign_id = ? AND state = 'sending' AND list_contains(?, seq)
            """,
            [datetime.now(UTC), self.campaign_id, seqs],
        )

    def record(self, outcomes: list[tuple]) -> None:
        """Writes many outcomes in one statement; tuples follow OUTCOME_SCHEMA's order."""
        if not outcomes:
            return
        frame = pl.DataFrame(outcomes, schema=OUTCOME_SCHEMA, orient="row")
        self.con.register("_outcomes", frame)
        try:
            self.con.execute(
                """
                UPDATE outbox SET state = o.state,
                       provider_message_id = coalesce(o.provider_message_id, outbox.provider_message_id),
                       error_code = o.error_code, error_detail = o.error_detail,
                       sent_at = coalesce(o.sent_at, outbox.sent_at), attempts = o.attempts, updated_at = ?
                FROM _outcomes AS o
                WHERE outbox.campaign_id = ? AND outbox.seq = o.seq
                """,
                [datetime.now(UTC), self.campaign_id],
            )
        finally:
            self.con.unregister("_outcomes")

    def counts(self) -> dict[str, int]:
        rows = self.con.execute(
            "SELECT state, count(*) FROM outbox WHERE campaign_id = ? GROUP BY state", [self.campaign_id]
        ).fetchall()
        return {state: n for state, n in rows}
