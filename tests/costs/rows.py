"""Test data written through the store API (the same SQL on SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from pipeline.store import Store


def ts(value: str | datetime | None) -> datetime | None:
    """'2026-10-10 10:00:00+00' (any offset) as an aware datetime."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value)


def money(value: Any) -> Decimal | None:
    """An amount read back through plain SQL (text on SQLite, NUMERIC on PostgreSQL) as a Decimal."""
    return None if value is None else Decimal(str(value))


def add_campaign(db: Store, campaign_id: str, category: str = "marketing", channel: str = "whatsapp", *,
                 name: str | None = None, template: str = "spring_sale", spec_json: str = "{}",
                 created_at: str = "2026-10-01 09:00:00+00") -> None:
    db.execute("""INSERT INTO campaigns (campaign_id, name, channel, template, category, created_at, spec_json)
                  VALUES (:c, :name, :channel, :template, :category, :at, :spec)""",
               c=campaign_id, name=name or f"Campaign {campaign_id}", channel=channel, template=template,
               category=category, at=ts(created_at), spec=spec_json)


def add_outbox(db: Store, campaign_id: str, message_id: str, *, recipient_key: str, state: str,
               country: str | None = None, category: str | None = "marketing", channel: str = "whatsapp",
               sender: str = "sender", payload_json: str = "{}", provider_message_id: str | None = None,
               error_code: str | None = None, queued_at: str | datetime = "2026-10-10 09:00:00+00",
               sent_at: str | datetime | None = None, attempts: int = 1) -> None:
    """One outbox row, numbered after the campaign's last."""
    seq = db.scalar("SELECT coalesce(max(seq), -1) + 1 FROM outbox WHERE campaign_id = :c", c=campaign_id)
    db.execute("""
        INSERT INTO outbox (message_id, campaign_id, seq, recipient_key, channel, sender, country, category,
            payload_json, state, attempts, provider_message_id, error_code, queued_at, sent_at)
        VALUES (:m, :c, :seq, :key, :channel, :sender, :country, :category, :payload, :state, :attempts, :pid, :code,
            :queued, :sent)""",
               m=message_id, c=campaign_id, seq=seq, key=recipient_key, channel=channel, sender=sender,
               country=country, category=category, payload=payload_json, state=state, attempts=attempts,
               pid=provider_message_id, code=error_code, queued=ts(queued_at), sent=ts(sent_at))


def add_receipt(db: Store, event_id: str, message_id: str | None, status: str, at: str | datetime, *,
                provider: str = "whatsapp", provider_message_id: str | None = None, category: str | None = None,
                pricing_type: str | None = None, error_code: str | None = None, error_title: str | None = None,
                recipient: str | None = None, raw_json: str | None = "{}") -> None:
    db.execute("""INSERT INTO events (event_id, provider, provider_message_id, message_id, status, error_code,
                      error_title, category, pricing_type, recipient, occurred_at, received_at, raw_json)
                  VALUES (:e, :provider, :pid, :m, :status, :code, :title, :category, :pricing, :recipient, :at,
                      :received, :raw)""",
               e=event_id, provider=provider, pid=provider_message_id or f"wamid.{message_id}", m=message_id,
               status=status, code=error_code, title=error_title, category=category, pricing=pricing_type,
               recipient=recipient, at=ts(at), received=datetime.now(UTC), raw=raw_json)
