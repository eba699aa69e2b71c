"""The receipts stage: the webhook receiver (signatures checked, raw payloads fsynced to spool
files before the 200), the ingest of closed spool files into events / inbound / suppressions,
receipts matched to our messages, unsubscribe and opt-out handling.

Hands to report: the events table, each receipt linked to its message.
"""
