"""The frequency cap again as a campaign's dispatch starts: preparation caps only what was sent before it, so
campaigns queued before any of them sent (a send window, a send-at time, an approval pending, two uploads the same
morning) would all get through. Every run of the flow (continuations and resumes too) checks the campaign's
still-queued messages against the cap before its dispatch, counting every send of the cap's period: other
campaigns' and this campaign's own (a queued message's recipient has none of its own in the normal case, so one
cap reads the same as preparation's `exclude_campaign`, and a cap of max > 1 counts what this campaign did send).
It counts what other campaigns' running dispatches are about to send as well: the runs check one at a time and
mark their lease (locks.cap_checked_in_turn), and each counts the queued and sending messages of the runs that
checked before it and still run. Of two campaigns starting together, the one that checks second withholds the
recipients the first will reach; a dispatch that starts while another sends for hours withholds those the other
has still to reach; a fleet's groups count while they hold their sender leases. (Once a run's dispatch returns with
messages left queued, a budget stop, a pause, a send window closed, they stop counting; its continuation checks again
and counts what was sent meanwhile.)

A message the cap now reaches is `withheld` (error_code `frequency_capped`, error_detail what the cap counted): a
terminal state, never claimed (only `queued` is), re-queued by no operator action (retry-failed and resend-unknown
take `failed`/`deferred` and `unknown`), counted by nothing that costs or caps (only `sent`/`unknown` are). Its
recipient moves from the campaign's `recipients` to its `rejects` (reason `frequency_capped`, as preparation
records it), so the summary's accepted + rejected still add up to the rows read. Each chunk is one write
transaction: the messages, their transitions and their recipients together."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import polars as pl
import pyarrow as pa
from sqlalchemy import Connection

from pipeline.audience.frequency import app_of, capped_recipients, describe, frequency_cap_for
from pipeline.dispatch.locks import cap_checked_in_turn
from pipeline.render.prepare_ids import id_channel
from pipeline.spec import CampaignSpec
from pipeline.store import Store, dialect, run
from pipeline.store.arrow import read_arrow

WITHHELD = "withheld"
REASON = "frequency_capped"  # the reason preparation gives the same recipients
_CHUNK = 500  # messages per transaction (two IN lists of at most this many, well under SQLite's bind limit)

_WITHHOLD = f"""
UPDATE outbox SET state = '{WITHHELD}', error_code = '{REASON}', error_detail = :detail, retryable = :no,
                  updated_at = :now
WHERE campaign_id = :c AND seq IN :seqs AND state = 'queued'
RETURNING seq, recipient_key"""
_TO_REJECTS = f"""
INSERT INTO rejects (campaign_id, row_number, reason, detail)
SELECT campaign_id, row_number, '{REASON}', :detail FROM recipients WHERE campaign_id = :c AND row_number IN :rows"""
_FROM_RECIPIENTS = "DELETE FROM recipients WHERE campaign_id = :c AND row_number IN :rows"


@dataclass(frozen=True)
class Withheld:
    messages: int  # queued messages withheld now
    detail: str = ""  # what the cap counted (describe(cap))
    refiled: int = 0  # recipients of messages withheld by an earlier run that its re-preparation had accepted again


def withhold_capped(db: Store, spec: CampaignSpec, campaign_id: str, *, now: datetime | None = None) -> Withheld:
    """Withholds the campaign's queued messages whose recipients the spec's cap (else the team's) reaches now."""
    if id_channel(spec.channel, spec.provider.options):  # ids and e-mail addresses: no cap, as in preparation
        return Withheld(0)
    cap = frequency_cap_for(spec)
    detail = describe(cap)
    running = cap_checked_in_turn(db, campaign_id)  # their queued messages count as sent
    queued = _frame(read_arrow(db, "SELECT seq, recipient_key FROM outbox WHERE campaign_id = :c AND state = 'queued' "
                                   "AND category IN :categories", _TYPES, c=campaign_id,
                               categories=list(cap.categories)))
    hit = queued.clear()
    if queued.height:
        capped = capped_recipients(db, cap, now=now or datetime.now(UTC), app=app_of(spec), in_flight=running)
        if len(capped):
            hit = queued.filter(capped.matcher.hit("recipient_key"))
    # Withheld by an earlier run, its recipient accepted again by this run's preparation (the cap's period over):
    # a reject again, as the message stays withheld.
    before = _frame(read_arrow(db, f"SELECT seq, recipient_key FROM outbox WHERE campaign_id = :c "
                                   f"AND state = '{WITHHELD}' AND error_code = '{REASON}'", _TYPES, c=campaign_id))
    if not hit.height and not before.height:
        return Withheld(0, detail)
    rows = _row_numbers(db, campaign_id, pl.concat([hit, before])["recipient_key"])
    stamp = datetime.now(UTC)  # when it was withheld (`now` is the time the cap is counted at)
    withheld = 0
    for start in range(0, hit.height, _CHUNK):
        seqs = hit["seq"][start:start + _CHUNK].to_list()
        with db.write() as conn:
            done = run(conn, _WITHHOLD, detail=detail, no=False, now=stamp, c=campaign_id, seqs=seqs).all()
            dialect.record_transitions(conn, campaign_id, [(seq, WITHHELD, REASON) for seq, _ in done], stamp)
            _move(conn, campaign_id, [n for _, key in done for n in rows.get(key, ())], detail)
        withheld += len(done)
    refiled = [n for key in before["recipient_key"].to_list() for n in rows.get(key, ())]
    for start in range(0, len(refiled), _CHUNK):
        with db.write() as conn:
            _move(conn, campaign_id, refiled[start:start + _CHUNK], detail)
    return Withheld(withheld, detail, len(refiled))


_TYPES = {"seq": pa.int64(), "recipient_key": pa.string(), "row_number": pa.int64()}


def _frame(table: pa.Table) -> pl.DataFrame:
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame


def _row_numbers(db: Store, campaign_id: str, keys: pl.Series) -> dict[str, list[int]]:
    """The campaign's accepted rows of these recipients (read once: the table has no index by recipient)."""
    found = _frame(read_arrow(db, "SELECT row_number, recipient_key FROM recipients WHERE campaign_id = :c", _TYPES,
                              c=campaign_id)).filter(pl.col("recipient_key").is_in(keys))
    rows: dict[str, list[int]] = {}
    for number, key in found.iter_rows():
        rows.setdefault(key, []).append(number)
    return rows


def _move(conn: Connection, campaign_id: str, row_numbers: list[int], detail: str) -> None:
    """Accepted rows to rejects (frequency_capped), in the caller's transaction."""
    if row_numbers:
        run(conn, _TO_REJECTS, c=campaign_id, rows=row_numbers, detail=detail)
        run(conn, _FROM_RECIPIENTS, c=campaign_id, rows=row_numbers)
