"""The outbox ledger: claims, outcomes and every message's transitions, in short write transactions.

A message is claimed `sending` in a committed transaction before its request leaves, and its outcome
is recorded after. So after a crash every message is `queued` (never sent), has its outcome, or is
`sending` (in flight at the crash: reconciled from receipts before anything is resent).
States: queued -> sending -> sent | failed | deferred | unknown; queued -> withheld (the frequency cap as the
dispatch starts, pipeline/dispatch/cap_at_send.py: terminal, never claimed).

A claim takes only what is still queued and says what it took: two dispatchers (processes or
machines) that try to claim the same message never both get it (pipeline/store/dialect.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from pipeline.store import Store, dialect, run, run_many, utc

_CHUNK = 300  # rows per statement (SQLite binds at most 32,766 parameters, an outcome takes 9)


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


@dataclass(frozen=True, slots=True)
class Claim:
    seqs: Sequence[int]
    provider_ids: Sequence[str | None] | None = None  # known before the answer (ChatApp mass sends)
    resend: bool = False  # already `sending` by this dispatcher: only the new provider ids are recorded


_RENAME = """
UPDATE outbox SET provider_message_id = :pid
WHERE campaign_id = :campaign_id AND seq = :seq AND state = 'sending'
"""


class Ledger:
    """All outbox reads and writes of one dispatch of one campaign."""

    def __init__(self, db: Store, campaign_id: str) -> None:
        self.db = db
        self.campaign_id = campaign_id

    def in_flight(self) -> int:
        return self.db.scalar("SELECT count(*) FROM outbox WHERE campaign_id = :c AND state = 'sending'",
                              c=self.campaign_id)

    def reconcile_in_flight(self, *, older_than_s: float | None = 0.0,
                            senders: Sequence[str] | None = None) -> tuple[int, int]:
        """Messages left `sending` by a crash: `sent` if a receipt carries our id; otherwise, once
        `older_than_s` has passed without one, `unknown` (resent only when the operator asks,
        since the request may have reached the provider). None: none becomes `unknown` here.
        `senders`: only these senders' messages (the ones this dispatcher holds: another dispatcher's
        messages in flight are its own to settle)."""
        now = datetime.now(UTC)
        scope, scoped = _senders_scope(senders)
        with self.db.write() as conn:
            reconciled = run(conn, f"""
                UPDATE outbox SET state = 'sent',
                    provider_message_id = (SELECT min(e.provider_message_id) FROM events e
                                           WHERE e.message_id = outbox.message_id),
                    sent_at = coalesce(sent_at, (SELECT min(e.occurred_at) FROM events e
                                                 WHERE e.message_id = outbox.message_id)),
                    updated_at = :now
                WHERE campaign_id = :c AND state IN ('sending', 'unknown'){scope}
                  AND EXISTS (SELECT 1 FROM events e WHERE e.message_id = outbox.message_id)
                """, now=now, c=self.campaign_id, **scoped).rowcount
            unknown = 0 if older_than_s is None else run(conn, f"""
                UPDATE outbox SET state = 'unknown', updated_at = :now
                WHERE campaign_id = :c AND state = 'sending' AND coalesce(updated_at, queued_at) <= :cutoff{scope}
                """, now=now, c=self.campaign_id, cutoff=now - timedelta(seconds=older_than_s),
                **scoped).rowcount
        return reconciled, unknown

    def in_flight_ages(self, senders: Sequence[str] | None = None) -> dict[str, float]:
        """Messages still `sending` (of `senders`, or all) and how many seconds ago they were claimed."""
        now = datetime.now(UTC)
        scope, scoped = _senders_scope(senders)
        rows = self.db.rows("SELECT message_id, coalesce(updated_at, queued_at) FROM outbox "
                            f"WHERE campaign_id = :c AND state = 'sending'{scope}", c=self.campaign_id, **scoped)
        return {message_id: (now - utc(at)).total_seconds() for message_id, at in rows}  # type: ignore[operator]

    def settle(self, with_receipt: dict[str, str], without: list[str]) -> None:
        """Crash leftovers: `sent` where a receipt named them, `unknown` where the grace ran out."""
        now = datetime.now(UTC)
        with self.db.write() as conn:
            run_many(conn, """
                UPDATE outbox SET state = 'sent', provider_message_id = :pid, sent_at = coalesce(sent_at, :now),
                    updated_at = :now
                WHERE message_id = :mid AND state = 'sending'
                """, [{"pid": pid, "mid": mid, "now": now} for mid, pid in with_receipt.items()])
            for part in _chunks(without):
                run(conn, "UPDATE outbox SET state = 'unknown', updated_at = :now "
                          "WHERE state = 'sending' AND message_id IN :ids", now=now, ids=part)

    def with_receipt(self, message_ids: list[str]) -> dict[str, str]:
        """Of these messages, those a receipt has named: message id -> provider message id."""
        found: dict[str, str] = {}
        for part in _chunks(message_ids):
            found.update(self.db.rows("SELECT message_id, min(provider_message_id) FROM events "
                                      "WHERE message_id IN :ids GROUP BY message_id", ids=part))
        return found

    def pending(self, sender: str, after_seq: int, limit: int, now: datetime) -> list[Pending]:
        rows = self.db.rows("""
            SELECT seq, message_id, sender, recipient_key, payload_json, attempts, timezone, est_cost_usd
            FROM outbox
            WHERE campaign_id = :c AND sender = :sender AND state = 'queued' AND seq > :after
              AND (not_before IS NULL OR not_before <= :now)
            ORDER BY seq LIMIT :limit
            """, c=self.campaign_id, sender=sender, after=after_seq, now=now, limit=limit)
        return [Pending(*row[:7], float(Decimal(str(row[7]))) if row[7] is not None else 0.0) for row in rows]

    def next_release(self, now: datetime) -> datetime | None:
        """The earliest time a queued message held back until later (send-at, a deferral) may go."""
        return utc(self.db.scalar("SELECT min(not_before) FROM outbox WHERE campaign_id = :c AND state = 'queued' "
                                  "AND not_before > :now", c=self.campaign_id, now=now))

    def senders(self, *, in_flight: bool = False) -> list[str]:
        """Senders with queued messages (and, with `in_flight`, those with messages left `sending`)."""
        states = ("queued", "sending") if in_flight else ("queued",)
        rows = self.db.rows("SELECT DISTINCT sender FROM outbox WHERE campaign_id = :c AND state IN :states "
                            "ORDER BY 1", c=self.campaign_id, states=states)
        return [r[0] for r in rows]

    def commit(self, claims: Sequence[Claim], outcomes: Sequence[Outcome]) -> set[int]:
        """One group commit: the claims (queued -> sending) and the outcomes gathered since the last.
        Returns the seqs claimed: a message another dispatcher took (or that is no longer queued) is not
        among them and must not be sent.

        Provider ids known before the answer (a ChatApp mass send's `<TaskId>:<To>`) are stored with the
        claim, so a receipt resolves to the message even when the answer never comes (a timeout, a
        crash); a resend of a message still `sending` records its new batch's ids."""
        if not claims and not outcomes:
            return set()
        now = datetime.now(UTC)
        resent = {seq for c in claims if c.resend for seq in c.seqs}
        with self.db.write() as conn:
            fresh: set[int] = set()
            wanted = [seq for c in claims if not c.resend for seq in c.seqs]
            for part in _chunks(wanted):
                fresh.update(dialect.claim(conn, self.campaign_id, part, now))
            claimed = fresh | resent
            names = [{"pid": pid, "seq": seq, "campaign_id": self.campaign_id}
                     for c in claims if c.provider_ids for seq, pid in zip(c.seqs, c.provider_ids, strict=True)
                     if pid is not None and seq in claimed]
            run_many(conn, _RENAME, names)
            rows = [(o.seq, o.state, o.attempts, o.provider_message_id, o.error_code, o.error_detail, o.sent_at,
                     o.not_before, o.retryable) for o in outcomes]
            for part in _chunks(rows):
                dialect.record_outcomes(conn, self.campaign_id, part, now)
            transitions = [*((seq, "sending", None) for seq in sorted(fresh)),
                           *((o.seq, o.state, o.error_code) for o in outcomes)]
            for part in _chunks(transitions):
                dialect.record_transitions(conn, self.campaign_id, part, now)
        return claimed

    def counts(self, senders: Sequence[str] | None = None) -> dict[str, int]:
        scope, scoped = _senders_scope(senders)
        rows = self.db.rows(f"SELECT state, count(*) FROM outbox WHERE campaign_id = :c{scope} GROUP BY state",
                            c=self.campaign_id, **scoped)
        return {state: n for state, n in rows}

    def spent_usd(self) -> float:
        """Estimated cost of what this campaign has sent or may have sent (for the budget guard)."""
        spent = self.db.scalar("SELECT coalesce(sum(CAST(est_cost_usd AS NUMERIC)), 0) FROM outbox "
                               "WHERE campaign_id = :c AND state IN ('sent', 'sending', 'unknown')", c=self.campaign_id)
        return float(spent)

    def recently_messaged(self, channel: str, window: timedelta, now: datetime) -> tuple[int, datetime | None]:
        """Unique recipients sent to on `channel` (any campaign) within `window`, and when the
        oldest of those sends leaves the window."""
        count, oldest = self.db.rows("""
            SELECT count(DISTINCT recipient_key), min(sent_at) FROM outbox
            WHERE channel = :channel AND state IN ('sent', 'sending', 'unknown') AND sent_at > :since
            """, channel=channel, since=now - window)[0]
        oldest = utc(oldest)
        return count, (oldest + window if oldest else None)


def _senders_scope(senders: Sequence[str] | None) -> tuple[str, dict[str, list[str]]]:
    """A condition limiting a statement to some senders' messages (none: every sender's)."""
    if senders is None:
        return "", {}
    return " AND sender IN :scope_senders", {"scope_senders": list(senders)}


def _chunks(items: Sequence[str] | Sequence[int]) -> list[list]:
    return [list(items[i:i + _CHUNK]) for i in range(0, len(items), _CHUNK)]
