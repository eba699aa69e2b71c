"""What recipients did with a campaign: replies, taps per button and opt-outs, read from the store's `replies`
(filled and linked to messages by receipts ingest, pipeline/receipts/replies.py). Aggregates only: no address
leaves here."""

from __future__ import annotations

from typing import Any

from pipeline.store import Store


def engagement(db: Store, campaign_id: str) -> dict[str, Any]:
    """{"replies": inbound messages answering the campaign, "reply_rate": messages answered / messages sent,
    "taps": {payload: taps}, "opt_outs": recipients who opted out by a reply or a tap}."""
    sent = db.scalar("SELECT count(*) FROM outbox WHERE campaign_id = :c AND sent_at IS NOT NULL", c=campaign_id)
    replies, answered, opt_outs = db.rows(
        """SELECT count(*), count(DISTINCT message_id),
                  count(DISTINCT CASE WHEN opt_out THEN coalesce(address, message_id) END)
           FROM replies WHERE campaign_id = :c""", c=campaign_id)[0]
    taps = db.rows("""SELECT payload, count(*) FROM replies WHERE campaign_id = :c AND kind = 'tap'
                      GROUP BY payload ORDER BY 2 DESC, 1""", c=campaign_id)
    return {"replies": int(replies or 0), "reply_rate": (int(answered or 0) / int(sent)) if sent else None,
            "taps": {str(payload): int(n) for payload, n in taps}, "opt_outs": int(opt_outs or 0)}
