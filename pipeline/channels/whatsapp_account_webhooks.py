"""Meta's account webhooks about templates and numbers (docs/providers.md §1.11) as registry updates:
`message_template_status_update`, `template_category_update`, `message_template_quality_update`,
`phone_number_quality_update` and `business_capability_update` (the messaging limit, §1.6). The messages parser
(whatsapp_webhooks.py) skips these fields; receipts ingest reads them here and applies them to the registry
(pipeline/channels/templates.py) in its own transaction.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from pipeline.channels.templates import Update, limit_tier
from pipeline.channels.whatsapp_webhooks import MalformedPayload

PROVIDER = "whatsapp"
FIELDS = ("message_template_status_update", "template_category_update", "message_template_quality_update",
          "phone_number_quality_update", "business_capability_update")
# A spool line can hold one of these only if it contains its field name: the cheap test before parsing.
MARKERS = tuple(f'"{f}"'.encode() for f in FIELDS)


def mentions_updates(raw_body: bytes) -> bool:
    return any(marker in raw_body for marker in MARKERS)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def parse_updates(raw_body: bytes) -> list[Update]:
    """Every template or number change in one webhook body (none for a messages-only body); MalformedPayload
    when one of these fields is there but not in Meta's shape."""
    try:
        doc = json.loads(raw_body)
    except (ValueError, RecursionError) as exc:
        raise MalformedPayload(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("entry"), list):
        raise MalformedPayload("entry: expected a list")
    updates: list[Update] = []
    for entry in doc["entry"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("changes"), list):
            continue
        account = _text(entry.get("id")) or ""
        try:
            at = datetime.fromtimestamp(int(entry.get("time")), tz=UTC) if entry.get("time") is not None else None
        except (TypeError, ValueError, OverflowError, OSError):
            raise MalformedPayload(f"entry.time {entry.get('time')!r} is not unix seconds") from None
        for change in entry["changes"]:
            if not isinstance(change, dict) or change.get("field") not in FIELDS:
                continue
            value = change.get("value")
            if not isinstance(value, dict):
                raise MalformedPayload(f"{change.get('field')}: value is not an object")
            update = _update(str(change["field"]), value, account, at or datetime.now(UTC))
            if update is not None:
                updates.append(update)
    return updates


def _tier(field: str, value: Any) -> str | None:
    try:
        return limit_tier(value)
    except ValueError as exc:
        raise MalformedPayload(f"{field}: {exc}") from None


def _update(field: str, v: dict[str, Any], account: str, at: datetime) -> Update | None:
    if field == "business_capability_update":
        # The portfolio's limit (v24+); max_daily_conversation_per_phone is its deprecated name (removed Feb 2026),
        # read only when the newer one is absent. A change of other capabilities (phone-number counts) is no update.
        limit = v.get("max_daily_conversations_per_business")
        limit = v.get("max_daily_conversation_per_phone") if limit is None else limit
        tier = _tier(field, limit)
        return None if tier is None else Update(provider=PROVIDER, account=account, kind="number_limit", at=at,
                                                value=str(limit), limit_tier=tier)
    if field == "phone_number_quality_update":
        if not v.get("display_phone_number") or not v.get("event"):
            raise MalformedPayload("phone_number_quality_update: display_phone_number and event are required")
        event = str(v["event"])
        # current_limit is deprecated for max_daily_conversations_per_business; after THROUGHPUT_UPGRADE it is the
        # throughput level (TIER_UNLIMITED = 1,000 mps, §1.7), not the messaging limit.
        limit = v.get("max_daily_conversations_per_business") or (
            None if event.upper() == "THROUGHPUT_UPGRADE" else v.get("current_limit"))
        return Update(provider=PROVIDER, account=account, kind="number_quality", at=at, value=event,
                      phone=str(v["display_phone_number"]), limit_tier=_tier(field, limit))
    name, language = v.get("message_template_name"), v.get("message_template_language")
    if not isinstance(name, str) or not isinstance(language, str) or not name or not language:
        raise MalformedPayload(f"{field}: message_template_name and message_template_language are required")
    common = dict(provider=PROVIDER, account=account, at=at, name=name, language=language,
                  template_id=_text(v.get("message_template_id")))
    if field == "message_template_status_update":
        if not v.get("event"):
            raise MalformedPayload(f"{field}: event is required")
        reason = v.get("reason")
        return Update(kind="status", value=str(v["event"]).upper(), reason=None if reason in (None, "NONE") else
                      str(reason), **common)  # type: ignore[arg-type]
    if field == "template_category_update":
        if not v.get("new_category"):
            raise MalformedPayload(f"{field}: new_category is required")
        return Update(kind="category", value=str(v["new_category"]).upper(),
                      previous=_text(v.get("previous_category")), **common)  # type: ignore[arg-type]
    if not v.get("new_quality_score"):
        raise MalformedPayload(f"{field}: new_quality_score is required")
    return Update(kind="quality", value=str(v["new_quality_score"]).upper(),
                  previous=_text(v.get("previous_quality_score")), **common)  # type: ignore[arg-type]
