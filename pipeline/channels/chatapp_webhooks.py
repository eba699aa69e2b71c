"""Alibaba ChatApp status callbacks (ChatAppStatus, docs/providers.md §3.4): a JSON array of reports -> Receipts.

Alibaba documents no signature for HTTP push. Our own protection: the callback URL is configured
with a shared token that every push carries in the `X-Campaign-Token` header (the sandbox sends it;
for the real service, put it in front as a header-adding proxy or allow-list Alibaba's addresses).
`TaskId` is our message id; a mass send's shared TaskId (`mass-…`) instead names the recipient's
message as `<TaskId>:<To>`, the provider id the channel stored, with `message_id` left empty: ingest
resolves it through the outbox (pipeline/receipts/links.py), also when the report came first.
Viber `subscribe`/`unsubscribe` reports become Inbound items with text SUBSCRIBE/UNSUBSCRIBE.

A user's own message (ChatAppInbound: `MessageId`, `From`, `To`, `Timestamp`, `Type`, `Message`, no `Status`)
becomes an Inbound: TEXT's words, a button tap's payload and title (REPLY / BUTTON / INTERACTIVE), the message
it answers when the push names one. Its sender is the phone in E.164 (`+` and digits), or for Messenger and
Instagram (`ChannelType`) the user id as it is, so a STOP or an opt-out tap suppresses the address the
campaign sends to (pipeline/receipts/staging.py `suppression_key`).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pipeline.channels.chatapp import MASS_PREFIX, mass_provider_id
from pipeline.channels.chatapp_manage import AUDIT_STATUS
from pipeline.channels.templates import Update
from pipeline.records import Inbound, Receipt

PROVIDER = "chatapp"
TOKEN_HEADER = "X-Campaign-Token"
_STATUSES = {"sent": "sent", "delivered": "delivered", "read": "read", "failed": "failed"}
_SUBSCRIPTIONS = {"subscribe": "SUBSCRIBE", "unsubscribe": "UNSUBSCRIBE"}
_CATEGORIES = frozenset({"marketing", "utility", "authentication", "service"})


class MalformedPayload(ValueError):
    """Not a ChatAppStatus array we understand; ingest quarantines it."""


def verify(raw_body: bytes, headers: Mapping[str, str], secret: str) -> bool:
    """True when the push carries our shared token (constant-time compare; the body is not signed)."""
    received = _header(headers, TOKEN_HEADER)
    if not received or not secret:
        return False
    return hmac.compare_digest(received.strip().encode("utf-8"), secret.encode("utf-8"))


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    wanted = name.lower()
    return next((v for k, v in headers.items() if k.lower() == wanted), None)


def _str(value: Any, where: str) -> str:
    if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
        return str(value)
    raise MalformedPayload(f"{where}: expected a non-empty string")


def _opt(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _millis(value: Any, where: str) -> datetime:
    try:
        return datetime.fromtimestamp(int(value) / 1000, tz=UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        raise MalformedPayload(f"{where}: timestamp {value!r} is not unix milliseconds") from None


_ID_CHANNEL_TYPES = frozenset({"messenger", "instagram"})
_TAP_TYPES = frozenset({"REPLY", "BUTTON", "INTERACTIVE", "QUICK_REPLY"})


def _message_object(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return value if isinstance(value, dict) else {}


def _scalar(value: Any) -> str | None:
    """Text when a string or a number (and not empty); a nested object names nothing."""
    if isinstance(value, str | int | float) and not isinstance(value, bool) and str(value):
        return str(value)
    return None


def _user_message(item: dict[str, Any], where: str, raw_json: str) -> Inbound:
    """ChatAppInbound: one message a user sent (docs/providers.md §3.4)."""
    _str(item.get("MessageId"), f"{where}.MessageId")  # the provider's id: ingest keys and cites it
    sender = _str(item.get("From"), f"{where}.From").strip()
    if (_scalar(item.get("ChannelType")) or "").lower() not in _ID_CHANNEL_TYPES:
        digits = "".join(ch for ch in sender if ch.isascii() and ch.isdigit())
        if not digits:
            raise MalformedPayload(f"{where}.From: {sender!r} is not a phone number")
        sender = f"+{digits}"
    kind = (_scalar(item.get("Type")) or "TEXT").upper()
    message = item.get("Message")
    text = payload = None
    if kind == "TEXT":
        text = _scalar(message if isinstance(message, str) else _message_object(message).get("text"))
    elif kind in _TAP_TYPES:
        body = _message_object(message)
        reply = body.get("button_reply") or body.get("list_reply") or body
        reply = reply if isinstance(reply, dict) else {}
        payload = _scalar(reply.get("payload") or reply.get("id"))
        text = _scalar(reply.get("text") or reply.get("title"))
    context = _message_object(item.get("Context")).get("id") or item.get("ContextMessageId")
    return Inbound(provider=PROVIDER, sender=sender, text=text, payload=payload, context_id=_scalar(context),
                   occurred_at=_millis(item.get("Timestamp"), f"{where}.Timestamp"), raw_json=raw_json)


def _report(item: Any, where: str) -> Receipt | Inbound | None:
    if not isinstance(item, dict):
        raise MalformedPayload(f"{where}: expected an object, got {type(item).__name__}")
    if _is_audit(item):
        return None  # a template or number notice (ChatAppAudit): parse_updates reads it
    if "Status" not in item and "Message" in item:
        return _user_message(item, where, json.dumps(item, ensure_ascii=False, separators=(",", ":"),
                                                     sort_keys=True))
    raw_status = _str(item.get("Status"), f"{where}.Status")
    occurred = _millis(item.get("Timestamp"), f"{where}.Timestamp")
    raw_json = json.dumps(item, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    lowered = raw_status.lower()
    if lowered in _SUBSCRIPTIONS:
        # A status report names the user in `To` (From is our sender); fall back to From.
        user = item.get("To") or item.get("From")
        return Inbound(provider=PROVIDER, sender=_str(user, f"{where}.To"),
                       text=_SUBSCRIPTIONS[lowered], occurred_at=occurred, raw_json=raw_json)
    if lowered == "deleted":
        return None  # the user deleted the message: not a delivery status
    if lowered not in _STATUSES:
        raise MalformedPayload(f"{where}.Status: unknown status {raw_status!r}")
    message_id = _str(item.get("MessageId"), f"{where}.MessageId")
    task_id, to = _opt(item.get("TaskId")), _opt(item.get("To"))
    provider_id, ours = message_id, task_id
    if task_id and task_id.startswith(MASS_PREFIX):
        if not to:
            raise MalformedPayload(f"{where}.To: a mass-send report needs the recipient")
        # As the send named the recipient (digits for phones; a report may add "+" or spaces).
        provider_id, ours = mass_provider_id(task_id, to.strip().lstrip("+")), None
    elif task_id == message_id:
        ours = None  # Alibaba echoes its own MessageId when no TaskId was sent: not one of ours
    category = _opt(item.get("ConversationType"))
    return Receipt(
        provider=PROVIDER,
        provider_message_id=provider_id,
        message_id=ours,
        status=_STATUSES[lowered],  # type: ignore[arg-type]  # a DeliveryStatus by construction
        error_code=_opt(item.get("ErrorCode")) if lowered == "failed" else None,
        error_title=_opt(item.get("ErrorDescription") or item.get("StatusDescription")) if lowered == "failed"
        else None,
        category=category.lower() if category and category.lower() in _CATEGORIES else None,
        recipient=to,
        occurred_at=occurred,
        raw_json=raw_json,
    )


def parse(raw_body: bytes) -> tuple[list[Receipt], list[Inbound]]:
    """Every report in one push; anything that is not an array of ChatAppStatus objects raises."""
    try:
        doc = json.loads(raw_body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedPayload(f"not JSON: {exc}") from None
    if isinstance(doc, dict):
        doc = [doc]  # MNS and some pushes deliver a single report
    if not isinstance(doc, list):
        raise MalformedPayload(f"body: expected an array of reports, got {type(doc).__name__}")
    receipts: list[Receipt] = []
    inbound: list[Inbound] = []
    for i, item in enumerate(doc):
        parsed = _report(item, f"[{i}]")
        if isinstance(parsed, Receipt):
            receipts.append(parsed)
        elif isinstance(parsed, Inbound):
            inbound.append(parsed)
    return receipts, inbound


# ---- ChatAppAudit: template review status pushes (docs/providers.md §3.8) -----------------------------------
# V1: [{WabaId, TemplateCode, Language, AuditStatus (pass | fail | auditing | unaudit | disabled | paused), Reason}];
# V2 adds `Type` (template, phoneNameUpdate, phoneQualityUpdate, wabaReviewUpdate, wabaAccountUpdate,
# templateCategoryUpdate, templateQualityUpdate), PhoneNumber, Status and CurrentLimit. Only the template status
# (V1, and V2 with Type template) is applied: the docs do not give the fields that carry a new category, quality or
# number rating, so those stay with `campaign templates sync`. The push carries no time: the receiver's is used.
AUDIT_MARKER = b'"AuditStatus"'
_AUDIT_TYPES = frozenset({"template", "phonenameupdate", "phonequalityupdate", "wabareviewupdate",
                          "wabaaccountupdate", "templatecategoryupdate", "templatequalityupdate"})


def _is_audit(item: dict[str, Any]) -> bool:
    return "AuditStatus" in item or ("WabaId" in item and str(item.get("Type", "")).lower() in _AUDIT_TYPES)


def mentions_updates(raw_body: bytes) -> bool:
    return AUDIT_MARKER in raw_body or b'"WabaId"' in raw_body


def parse_updates(raw_body: bytes, received_at: datetime) -> list[Update]:
    """The template status changes in one push (none for a ChatAppStatus / ChatAppInbound push); MalformedPayload
    for a ChatAppAudit report without TemplateCode, Language or a known AuditStatus. The template is named by its
    TemplateCode: the registry resolves the name (pipeline/channels/templates.py `apply_updates`)."""
    try:
        doc = json.loads(raw_body)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MalformedPayload(f"not JSON: {exc}") from None
    updates: list[Update] = []
    for i, item in enumerate(doc if isinstance(doc, list) else [doc]):
        if not isinstance(item, dict) or not _is_audit(item):
            continue
        if str(item.get("Type") or "template").lower() != "template":
            continue  # a number or WABA notice, or a category / quality change whose fields are not documented
        where = f"[{i}]"
        audit = _str(item.get("AuditStatus"), f"{where}.AuditStatus").lower()
        if audit not in AUDIT_STATUS:
            raise MalformedPayload(f"{where}.AuditStatus: unknown review status {audit!r}")
        updates.append(Update(
            provider=PROVIDER, account=_opt(item.get("WabaId")) or "", kind="status", at=received_at,
            template_id=_str(item.get("TemplateCode"), f"{where}.TemplateCode"),
            language=_str(item.get("Language"), f"{where}.Language"), value=AUDIT_STATUS[audit],
            reason=_opt(item.get("Reason"))))
    return updates
