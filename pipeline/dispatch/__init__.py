"""The dispatch stage: rendered recipients become outbox rows (one deterministic message id each),
then per-sender lanes send them at the channel's rate with retries, group-committed ledger claims,
the budget guard, send windows, messaging limits, pause and resume, locks and fallback legs.

Hands to receipts: every message's state and the provider message id its receipts will name.
"""
