"""The outbox ledger: every message's transitions, written in group commits.

A message is marked `sending` (committed) just before its request leaves, and its outcome is
recorded after. So after a crash every message is `queued` (never sent), has its outcome, or is
`sending` (in flight at the crash: reconciled from receipts before anything is resent).
States: queued -> sending -> sent | failed | deferred | unknown.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import duckdb

from pipeline.store import scalar


@dataclass(frozen=True, slots=True)
class Pending:
    seq: int
    message_id: str
    sender: str
    recipient_key: str
    payload_json: str
    attempts: int
    timezone: str | None = None
    est_cost_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class Outcome:
    seq: int
    state: str  # sent | failed | deferred | queued (given back) | unknown
    provider_message_id: str | None
    error_code: str | None
    error_detail: str | None
    sent_at: datetime | None
    attempts: int
    not_before: datetime | None = None
    retryable: bool | None = None


class Ledger:
    """All outbox reads and writes of one dispatch; the caller serialises calls (one DuckDB writer)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, campaign_id: str) -> None:
        self.con = con
        self.campaign_id = campaign_id

    def in_flight(self) -> int:
        return scalar(
            self.con, "SELECT count(*) FROM outbox WHERE campaign_id = ? AND state = 'sending'", [self.campaign_id]
        )

    def reconcile_in_flight(self, *, older_than_s: float = 0.0) -> tuple[int, int]:
        """Messages left `sending` by a crash: `sent` if a receipt carries our id; otherwise, once
        `older_than_s` has passed without one, `unknown` (resent only when the operator asks,
        since the request may have reached the provider)."""
        now = datetime.now(UTC)
        reconciled = self.con.execute(
            """
            UPDATE outbox SET state = 'sent', provider_message_id = s.provider_message_id,
                   sent_at = coalesce(outbox.sent_at, s.first_at), updated_at = ?
            FROM (SELECT message_id, any_value(provider_message_id) AS provider_message_id,
                         min(occurred_at) AS first_at
                  FROM events WHERE message_id IS NOT NULL GROUP BY message_id) AS s
            WHERE outbox.campaign_id = ? AND outbox.state IN ('sending', 'unknown')
              AND outbox.message_id = s.message_id
            """,
            [now, self.campaign_id],
        ).fetchall()[0][0]
        unknown = self.con.execute(
            """
            UPDATE outbox SET state = 'unknown', updated_at = ?
            WHERE campaign_id = ? AND state = 'sending' AND coalesce(updated_at, queued_at) <= ?
            """,
            [now, self.campaign_id, now - timedelta(seconds=older_than_s)],
        ).fetchall()[0][0]
        return reconciled, unknown

    def in_flight_ages(self) -> dict[str, float]:
        """Messages still `sending` and how many seconds ago they were claimed."""
        rows = self.con.execute(
            """
            SELECT message_id, epoch(now() - coalesce(updated_at, queued_at)) FROM outbox
            WHERE campaign_id = ? AND state = 'sending'
            """,
            [self.campaign_id],
        ).fetchall()
        return {message_id: float(age) for message_id, age in rows}

    def settle(self, with_receipt: dict[str, str], without: list[str]) -> None:
        """Crash leftovers: `sent` where a receipt named them, `unknown` where the grace ran out."""
        now = datetime.now(UTC)
        if with_receipt:
            self.con.execute(
                """
                UPDATE outbox SET state = 'sent', provider_message_id = r.pid, sent_at = coalesce(sent_at, ?),
                       updated_at = ?
                FROM (SELECT unnest(?) AS message_id, unnest(?) AS pid) AS r
                WHERE outbox.message_id = r.message_id AND outbox.state = 'sending'
                """,
                [now, now, list(with_receipt), list(with_receipt.values())],
            )
        if without:
            self.con.execute(
                "UPDATE outbox SET state = 'unknown', updated_at = ? "
                "WHERE state = 'sending' AND list_contains(?, message_id)",
                [now, without],
            )

    def with_receipt(self, message_ids: list[str]) -> dict[str, str]:
        """Of these messages, those a receipt has named: message id -> provider message id."""
        if not message_ids:
            return {}
        rows = self.con.execute(
            """
            SELECT message_id, any_value(provider_message_id) FROM events
            WHERE list_contains(?, message_id) GROUP BY message_id
            """,
            [message_ids],
        ).fetchall()
        return dict(rows)

    def pending(self, sender: str, after_seq: int, limit: int, now: datetime) -> list[Pending]:
        rows = self.con.execute(
            """
            SELECT seq, message_id, sender, recipient_key, payload_json, attempts, timezone,
                   coalesce(est_cost_usd, 0)::DOUBLE
            FROM outbox
            WHERE campaign_id = ? AND sender = ? AND state = 'queued' AND seq > ?
              AND (not_before IS NULL OR not_before <= ?)
            ORDER BY seq LIMIT ?
            """,
            [self.campaign_id, sender, after_seq, now, limit],
        ).fetchall()
        return [Pending(*row) for row in rows]

    def senders(self) -> list[str]:
        rows = self.con.execute(
            "SELECT DISTINCT sender FROM outbox WHERE campaign_id = ? AND state = 'queued' ORDER BY 1",
            [self.campaign_id],
        ).fetchall()
        return [r[0] for r in rows]

    def commit(self, claims: list[int], outcomes: list[Outcome], claim_pids: list[str | None] | None = None) -> None:
        """One group commit: the claims (queued -> sending) and the outcomes gathered since the last.

        `claim_pids` (one per claim, or None) are the provider ids a send will be known by before it
        is answered (a ChatApp mass send's `<TaskId>:<To>`): stored with the claim, so a receipt
        resolves to the message even when the answer never comes (a timeout, a crash). A resend of a
        message still `sending` claims again with its new batch's ids.

        One UPDATE and one INSERT whatever the mix: each statement costs DuckDB ~1 ms to plan and
        run however few rows it touches, and at 1,000+ messages/s the ledger's commits share two
        cores with the event loop and the provider."""
        if not claims and not outcomes:
            return
        now = datetime.now(UTC)
        seqs = [*claims, *(o.seq for o in outcomes)]
        states = [*(["sending"] * len(claims)), *(o.state for o in outcomes)]
        codes = [*([None] * len(claims)), *(o.error_code for o in outcomes)]
        self.con.execute("BEGIN")
        try:
            self.con.execute(
                """
                UPDATE outbox SET
                    state = o.state,
                    attempts = CASE WHEN o.claim THEN outbox.attempts + 1 ELSE o.attempts END,
                    provider_message_id = coalesce(o.pid, outbox.provider_message_id),
                    error_code = CASE WHEN o.claim THEN outbox.error_code ELSE o.code END,
                    error_detail = CASE WHEN o.claim THEN outbox.error_detail ELSE o.detail END,
                    sent_at = coalesce(o.sent_at, outbox.sent_at),
                    not_before = CASE WHEN o.claim THEN outbox.not_before ELSE o.not_before END,
                    retryable = CASE WHEN o.claim THEN outbox.retryable ELSE o.retryable END,
                    updated_at = ?
                FROM (SELECT unnest(?) AS seq, unnest(?) AS state, unnest(?::BOOLEAN[]) AS claim,
                             unnest(?) AS pid, unnest(?) AS code, unnest(?) AS detail,
                             unnest(?::TIMESTAMPTZ[]) AS sent_at, unnest(?::INTEGER[]) AS attempts,
                             unnest(?::TIMESTAMPTZ[]) AS not_before, unnest(?::BOOLEAN[]) AS retryable) AS o
                WHERE outbox.campaign_id = ? AND outbox.seq = o.seq AND outbox.seq BETWEEN ? AND ?
                  -- a claim takes only what is still queued, or re-names a resend still in flight
                  AND (NOT o.claim OR outbox.state = 'queued' OR (outbox.state = 'sending' AND o.pid IS NOT NULL))
                """,
                [now, seqs, states, [True] * len(claims) + [False] * len(outcomes),
                 *self._columns(claim_pids or [None] * len(claims), outcomes), self.campaign_id, min(seqs),
                 max(seqs)],
            )
            self.con.execute(
                "INSERT INTO outbox_transitions SELECT ?, unnest(?), unnest(?), unnest(?::VARCHAR[]), ?",
                [self.campaign_id, seqs, states, codes, now],
            )
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise

    @staticmethod
    def _columns(claim_pids: list[str | None], outcomes: list[Outcome]) -> list[list[object]]:
        """The outcome columns of the commit's UPDATE: the claims' planned provider ids, else nulls."""
        pad: list[object] = [None] * len(claim_pids)
        return [
            [*(claim_pids if name == "provider_message_id" else pad), *(getattr(o, name) for o in outcomes)]
            for name in ("provider_message_id", "error_code", "error_detail", "sent_at", "attempts", "not_before",
                         "retryable")
        ]

    def counts(self) -> dict[str, int]:
        rows = self.con.execute(
            "SELECT state, count(*) FROM outbox WHERE campaign_id = ? GROUP BY state", [self.campaign_id]
        ).fetchall()
        return {state: n for state, n in rows}

    def recently_messaged(self, channel: str, window: timedelta, now: datetime) -> tuple[int, datetime | None]:
        """Unique recipients sent to on `channel` (any campaign) within `window`, and when the
        oldest of those sends leaves the window."""
        row = self.con.execute(
            """
            SELECT count(DISTINCT recipient_key), min(sent_at) FROM outbox
            WHERE channel = ? AND state IN ('sent', 'sending', 'unknown') AND sent_at > ?
            """,
            [channel, now - window],
        ).fetchall()[0]
        return row[0], (row[1] + window if row[1] else None)
