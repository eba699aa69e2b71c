"""What the reference parser gives for each spool line, before ingest writes it (pipeline/receipts/ingest.py):
receipts, inbound messages, replies and taps, opt-outs, the provider's template and number changes, and the lines
quarantined with their reason. One parser per provider whose webhooks the receiver spools; a STOP reply, an
opt-out tap or Meta's marketing stop (`user_preferences`) becomes a suppression of the address on the channel the
provider reaches."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from pipeline.channels import (
    alibaba_sms_webhooks,
    chatapp_webhooks,
    email_webhooks,
    messenger_webhooks,
    twilio_webhooks,
    unsubscribe_webhooks,
    viber_webhooks,
    whatsapp_account_webhooks,
)
from pipeline.channels.templates import Update
from pipeline.channels.whatsapp_webhooks import (
    PREFERENCES_FIELD,
    PREFERENCES_MARKER,
    inbound_message_id,
    parse_preferences,
    parse_webhook,
)
from pipeline.receipts.event_ids import _hash, event_id
from pipeline.receipts.spool import decode_record
from pipeline.records import Inbound, Receipt

Parser = Callable[[bytes], tuple[list[Receipt], list[Inbound]]]
# provider -> webhook body parser; a new provider adds one entry (and a route in the receiver).
# One parser per provider whose webhooks the receiver spools (pipeline/receipts/routes.py).
PARSERS: dict[str, Parser] = {
    "whatsapp": parse_webhook,
    "messenger": messenger_webhooks.parse,
    "instagram": messenger_webhooks.parse,
    "viber": viber_webhooks.parse,
    "chatapp": chatapp_webhooks.parse,
    "twilio": twilio_webhooks.parse,
    "alibaba_sms": alibaba_sms_webhooks.parse,
    "email": email_webhooks.parse,
    "unsubscribe": unsubscribe_webhooks.parse,
}
# The channel a provider's opt-outs suppress, and how it writes addresses.
SUPPRESSION_CHANNEL = {"twilio": "sms", "alibaba_sms": "sms", "unsubscribe": "email"}
_ID_CHANNELS = frozenset({"messenger", "instagram", "viber"})


def suppression_key(provider: str, sender: str | None) -> tuple[str, str | None]:
    """(channel, address) an opt-out from `sender` on `provider` suppresses: phone channels by E.164,
    e-mail by lower-cased address, Messenger/Instagram/Viber by their user id."""
    channel = SUPPRESSION_CHANNEL.get(provider, provider)
    if not sender:
        return channel, None
    if channel == "email":
        return channel, sender.strip().lower()
    if channel in _ID_CHANNELS:
        return channel, sender.strip()
    if provider == "chatapp" and not sender.startswith("+"):
        # Chat App's Messenger/Instagram users arrive as their ids (chatapp_webhooks.py writes phones as E.164).
        return channel, sender.strip()
    return channel, _address(sender)

STOP_KEYWORDS = frozenset({"stop", "unsubscribe", "stopall", "end", "cancel", "quit", "退订"})
OPT_OUT_ERROR_CODES = frozenset({"131050"})  # recipient stopped marketing messages from this business
# Meta's `user_preferences` change that opts a user out of marketing messages (the 131050 error's cause).
MARKETING_STOP = ("marketing_messages", "stop")


def inbound_event_id(item: Inbound) -> str:
    return _hash("inbound", item.provider, inbound_message_id(item) or item.raw_json)


def is_stop_keyword(text: str | None) -> bool:
    return text is not None and text.strip().casefold() in STOP_KEYWORDS


def _address(digits_or_e164: str | None) -> str | None:
    # ASCII digits only, as the SQL below does (Python's \d would also keep other scripts' digits).
    digits = re.sub(r"[^0-9]", "", digits_or_e164 or "")
    return f"+{digits}" if digits else None


class Staged:
    """Rows the reference parser gives for the lines of one batch, before they are written."""

    def __init__(self, opt_outs: frozenset[str] = frozenset()) -> None:
        self.opt_outs = opt_outs  # quick-reply payloads that opt out (pipeline/receipts/replies.py)
        self.events: list[dict[str, Any]] = []
        self.inbound: list[dict[str, Any]] = []
        self.quarantine: list[dict[str, Any]] = []
        self.stops: list[dict[str, Any]] = []
        self.replies: list[dict[str, Any]] = []  # linked to their messages after the write (replies.py)
        self.updates: list[Update] = []  # Meta's template and number webhooks

    def add_updates(self, name: str, line_no: int, body: bytes, chatapp_received_at: datetime | None = None) -> None:
        """A line whose body also announces template or number changes (Meta's; Chat App's when it was received
        at `chatapp_received_at`: its pushes carry no time)."""
        try:
            self.updates += (whatsapp_account_webhooks.parse_updates(body) if chatapp_received_at is None
                             else chatapp_webhooks.parse_updates(body, chatapp_received_at))
        except ValueError as exc:
            self.quarantine.append({"spool_file": name, "line_number": line_no, "raw": body.decode(errors="replace"),
                                    "reason": f"{type(exc).__name__}: {exc}"[:500]})

    def add_preferences(self, order: dict[str, int], name: str, body: bytes, first_pos: int) -> None:
        """A WhatsApp line's `user_preferences` changes: a user who stops marketing messages is suppressed as the
        131050 error would suppress them (same reason; the source says which). A "resume" records nothing: the
        store never lifts a suppression (every opt-out is kept), so an opt-in has nothing to undo."""
        try:
            preferences = parse_preferences(body)
        except ValueError as exc:  # as add_updates: quarantined, the line's receipts stay
            self.quarantine.append({"spool_file": name, "line_number": order["line_no"], "raw": body.decode(
                errors="replace"), "reason": f"{type(exc).__name__}: {exc}"[:500]})
            return
        for k, p in enumerate(preferences):
            # wa_id is the phone number in digits; a user id of another shape names no address we send to.
            if (p.category, p.value) != MARKETING_STOP or not re.fullmatch(r"\+?[0-9]+", p.wa_id):
                continue
            channel, address = suppression_key("whatsapp", p.wa_id)
            self.stops.append({**order, "pos": first_pos + k, "channel": channel, "address": address,
                               "reason": "marketing_opt_out", "source": PREFERENCES_FIELD, "since": p.occurred_at})

    def add_line(self, file_idx: int, name: str, line_no: int, line: bytes) -> None:
        if not line.strip():
            return
        try:
            provider, received_at, body = decode_record(line)
            parser = PARSERS.get(provider)
            if parser is None:
                raise ValueError(f"unknown provider {provider!r}")
            receipts, inbound = parser(body)
        except (ValueError, TypeError, KeyError, RecursionError) as exc:  # MalformedPayload is a ValueError
            self.quarantine.append({
                "spool_file": name, "line_number": line_no, "reason": f"{type(exc).__name__}: {exc}"[:500],
                "raw": line.decode("utf-8", errors="replace"),
            })
            return
        if provider == "whatsapp" and whatsapp_account_webhooks.mentions_updates(body):
            # As on the bulk path: a malformed template/number change is quarantined, the line's receipts stay.
            self.add_updates(name, line_no, body)
        elif provider == chatapp_webhooks.PROVIDER and chatapp_webhooks.mentions_updates(body):
            self.add_updates(name, line_no, body, received_at)  # ChatAppAudit: template review status
        order = {"file_idx": file_idx, "line_no": line_no}
        if provider == "whatsapp" and PREFERENCES_MARKER in body:
            self.add_preferences(order, name, body, first_pos=len(inbound))  # after the line's STOP replies
        for pos, r in enumerate(receipts):
            self.events.append({
                **order, "pos": pos, "event_id": event_id(r), "provider": r.provider,
                "provider_message_id": r.provider_message_id, "message_id": r.message_id,
                "status": r.status, "error_code": r.error_code, "error_title": r.error_title,
                "category": r.category, "pricing_type": r.pricing_type, "recipient": r.recipient,
                "occurred_at": r.occurred_at, "received_at": received_at, "raw_json": r.raw_json,
            })
        for pos, m in enumerate(inbound):
            self.inbound.append({
                **order, "pos": pos, "event_id": inbound_event_id(m), "provider": m.provider,
                "sender": m.sender, "text": m.text, "occurred_at": m.occurred_at, "raw_json": m.raw_json,
            })
            channel, address = suppression_key(provider, m.sender)
            tapped = m.payload is not None and m.payload in self.opt_outs
            if provider != unsubscribe_webhooks.PROVIDER:  # an unsubscribe link's click is not a reply
                self.replies.append({
                    **order, "pos": pos, "event_id": inbound_event_id(m), "channel": channel, "address": address,
                    "kind": "tap" if m.payload else "reply", "payload": m.payload, "context_id": m.context_id,
                    "opt_out": is_stop_keyword(m.text) or tapped, "occurred_at": m.occurred_at, "linked": False,
                    "message_id": None, "campaign_id": None})
            if (is_stop_keyword(m.text) or tapped) and address:
                reason = "unsubscribe" if provider == "unsubscribe" else "opt_out_button" if tapped else "stop_reply"
                source = (unsubscribe_webhooks.suppression_source(m) if provider == unsubscribe_webhooks.PROVIDER
                          else inbound_message_id(m))
                self.stops.append({**order, "pos": pos, "channel": channel, "address": address, "reason": reason,
                                   "source": source, "since": m.occurred_at})
