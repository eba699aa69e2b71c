-- Counts a campaign's messages by everything a price depends on: its outbox rows joined with their folded
-- receipts (billing_messages, see pipeline/costs/billing.py), stored in billing_groups for the reports to price.
-- Runs in the store (SQLite or PostgreSQL), so the rows never leave it; pipeline/costs/billing.py fills in the
-- WHERE condition (one campaign) and the UTC day of a timestamp (the one thing the two databases spell
-- differently), and binds chatapp_channel (what a ChatApp campaign sends on, from its spec).
-- Counting rules:
--   sent       outbox state 'sent' (the provider accepted the message), or 'unknown' / 'sending' (in flight at a
--              crash) with a receipt naming it: the provider had it, as reconcile_in_flight in
--              pipeline/dispatch/ledger.py settles it (billing_messages has a row for every message a receipt names)
--   delivered  current receipt status delivered or read (read implies delivered; failed is terminal)
--   read       current receipt status read
--   failed     refused at send (outbox 'failed') or failed after acceptance (receipt 'failed')
--   category   what the receipts say Meta billed (pricing.category), else the category it was sent as
--   price_day  UTC day it was sent (else delivered, else queued): the card and rules of that day apply
SELECT
    o.campaign_id,
    -- A ChatApp message is billed as the channel it went out on (WhatsApp fee + ChatApp's service fee, ...).
    CASE WHEN o.channel = 'chatapp' THEN :chatapp_channel ELSE o.channel END AS channel,
    o.country,
    coalesce(b.billed_category, o.category) AS category,
    o.category AS sent_category,
    coalesce(b.pricing_type, 'regular') AS pricing_type,
    {day} AS price_day,
    CASE WHEN o.state = 'failed' THEN coalesce(o.error_code, 'unknown')
         WHEN b.status_rank = 9 THEN coalesce(b.receipt_error, 'unknown') END AS error_code,
    max(CASE WHEN o.state = 'failed' THEN o.error_detail ELSE b.error_title END) AS error_title,
    sum(CASE WHEN o.state = 'sent' OR (o.state IN ('unknown', 'sending') AND b.message_id IS NOT NULL)
             THEN 1 ELSE 0 END) AS sent,
    sum(CASE WHEN b.status_rank IN (2, 3) THEN 1 ELSE 0 END) AS delivered,
    sum(CASE WHEN b.status_rank = 3 THEN 1 ELSE 0 END) AS "read",
    sum(CASE WHEN o.state = 'failed' OR b.status_rank = 9 THEN 1 ELSE 0 END) AS failed,
    coalesce(sum(CASE WHEN o.state = 'sent' OR (o.state IN ('unknown', 'sending') AND b.message_id IS NOT NULL)
                      THEN coalesce(o.segments, 1) END), 0) AS sent_segments
FROM outbox AS o
LEFT JOIN billing_messages AS b ON b.message_id = o.message_id
WHERE {where}
GROUP BY 1, 2, 3, 4, 5, 6, 7, 8
