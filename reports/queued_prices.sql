-- The budget guard's price of each queued message of one campaign (dispatch stops before the running cost would
-- pass the budget): platform + service fee of the card in force today for the message's market and category;
-- a message no price applies to is left alone (the ledger reads it as 0). Sets outbox.est_cost_usd; the parameter is
-- the campaign id.
UPDATE outbox SET est_cost_usd = coalesce(p.cost, 0)
FROM (
    SELECT o.message_id, arg_max(pr.platform_fee_usd + pr.service_fee_usd, pr.effective_from) AS cost
    FROM outbox o
    JOIN markets m ON m.channel = o.channel AND m.region = o.country
    JOIN prices pr ON pr.channel = o.channel AND pr.market = m.market AND pr.category = o.category
                  AND pr.effective_from <= current_date
    WHERE o.campaign_id = ? AND o.state = 'queued'
    GROUP BY o.message_id
) AS p
WHERE outbox.message_id = p.message_id
