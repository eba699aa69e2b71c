-- Counts a campaign's messages by everything a price depends on: its outbox rows joined with their folded
-- receipts (billing_messages, see pipeline/costs/billing.py), stored in billing_groups for the reports to price.
-- The WHERE condition is filled in by pipeline/costs/billing.py (`o.campaign_id = $c`).
-- Counting rules:
--   sent       outbox state 'sent' (the provider accepted the message)
--   delivered  current receipt status delivered or read (read implies delivered; failed is terminal)
--   read       current receipt status read
--   failed     refused at send (outbox 'failed') or failed after acceptance (receipt 'failed')
--   category   what the receipts say Meta billed (pricing.category), else the category it was sent as
--   price_day  UTC day it was sent (else delivered, else queued): the card and rules of that day apply
SELECT
    o.campaign_id,
    -- A ChatApp message is billed as the channel it went out on (WhatsApp fee + ChatApp's service fee, ...).
    CASE WHEN o.channel = 'chatapp'
         THEN coalesce(json_extract_string(c.spec_json, '$.provider.options.channel_type'), 'chatapp')
         ELSE o.channel END AS channel,
    o.country,
    coalesce(b.billed_category, o.category) AS category,
    o.category AS sent_category,
    coalesce(b.pricing_type, 'regular') AS pricing_type,
    CAST(timezone('UTC', coalesce(o.sent_at, b.delivered_at, o.queued_at)) AS DATE) AS price_day,
    CASE WHEN o.state = 'failed' THEN coalesce(o.error_code, 'unknown')
         WHEN b.status_rank = 9 THEN coalesce(b.receipt_error, 'unknown') END AS error_code,
    max(CASE WHEN o.state = 'failed' THEN o.error_detail ELSE b.error_title END) AS error_title,
    count(*) FILTER (WHERE o.state = 'sent') AS sent,
    count(*) FILTER (WHERE b.status_rank IN (2, 3)) AS delivered,
    count(*) FILTER (WHERE b.status_rank = 3) AS "read",
    count(*) FILTER (WHERE o.state = 'failed' OR b.status_rank = 9) AS failed,
    coalesce(sum(coalesce(o.segments, 1)) FILTER (WHERE o.state = 'sent'), 0) AS sent_segments
FROM outbox AS o
LEFT JOIN billing_messages AS b USING (message_id)
LEFT JOIN campaigns AS c ON c.campaign_id = o.campaign_id
WHERE {where}
GROUP BY ALL
