"""Realistic, seeded WhatsApp status webhook bodies for the receiver and ingest benchmarks.

Shapes follow docs/providers.md §1.9 (v23 status objects: conversation + pricing on one of sent or
delivered, errors on failed). Bodies are built from string templates rather than json.dumps,
so generating a million statuses takes seconds, not the benchmark's budget.
"""

from __future__ import annotations

import json
import random
import uuid

WABA_ID = "102290129340398"
PHONE_NUMBER_ID = "106540352242922"
DISPLAY_NUMBER = "15550783881"
CATEGORIES = ("marketing", "marketing", "marketing", "utility", "utility", "authentication", "service")
FAILURES = (
    (131026, "Message undeliverable", "Message Undeliverable."),
    (131049, "This message was not delivered to maintain healthy ecosystem engagement.",
     "In order to maintain a healthy ecosystem engagement, the message failed to be delivered."),
    (131050, "Unable to deliver the message. This recipient has chosen to stop receiving marketing "
     "messages on WhatsApp from your business.", "Recipient stopped marketing messages."),
    (131047, "Re-engagement message", "Message failed to send because more than 24 hours have passed "
     "since the customer last replied to this number."),
)
_NS = uuid.UUID("6f0c7c1e-3b52-4d51-8d8c-1d5c9f0e2a77")
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def wamid(rng: random.Random) -> str:
    return "wamid.HBgL" + "".join(rng.choices(_B64, k=48))


def message_id(n: int) -> str:
    """Our outbox id for message n (a uuid5, like the dispatcher's)."""
    return str(uuid.uuid5(_NS, f"bench:{n}"))


def status_json(
    *, wid: str, status: str, ts: int, recipient: str, callback: str | None, category: str | None,
    conversation: str | None = None, error: tuple[int, str, str] | None = None,
) -> str:
    parts = [f'"id":"{wid}","status":"{status}","timestamp":"{ts}","recipient_id":"{recipient}"']
    if callback is not None:
        parts.append(f'"biz_opaque_callback_data":"{callback}"')
    if conversation is not None:
        origin = category if category in ("marketing", "utility", "authentication", "service") else "marketing"
        expiry = f',"expiration_timestamp":"{ts + 86400}"' if status == "sent" else ""
        parts.append(f'"conversation":{{"id":"{conversation}"{expiry},"origin":{{"type":"{origin}"}}}}')
    if category is not None:
        parts.append(
            f'"pricing":{{"billable":true,"pricing_model":"PMP","type":"regular","category":"{category}"}}')
    if error is not None:
        code, title, details = error
        parts.append(
            f'"errors":[{{"code":{code},"title":"{title}","message":"{title}",'
            f'"error_data":{{"details":"{details}"}},'
            '"href":"/documentation/business-messaging/whatsapp/support/error-codes"}]')
    return "{" + ",".join(parts) + "}"


def envelope_json(statuses: list[str]) -> bytes:
    return (
        '{"object":"whatsapp_business_account","entry":[{"id":"' + WABA_ID + '","changes":[{"value":'
        '{"messaging_product":"whatsapp","metadata":{"display_phone_number":"' + DISPLAY_NUMBER
        + '","phone_number_id":"' + PHONE_NUMBER_ID + '"},"statuses":[' + ",".join(statuses)
        + ']},"field":"messages"}]}]}'
    ).encode("ascii")


def message_statuses(n: int, rng: random.Random, t0: int) -> list[tuple[int, str]]:
    """Every status object Meta would post for message n, as (timestamp, json) in event order.

    Outcome mix: 65 % read, 25 % delivered, 6 % sent only, 4 % failed (some with 131050).
    """
    wid, recipient, callback = wamid(rng), f"{rng.randrange(10**10, 10**11)}", message_id(n)
    category = rng.choice(CATEGORIES)
    conversation = uuid.UUID(int=rng.getrandbits(128)).hex
    u = rng.random()
    steps = ["sent"] if u < 0.06 else ["sent", "failed"] if u < 0.10 else ["sent", "delivered"]
    if u >= 0.35:
        steps.append("read")
    priced = "sent" if rng.random() < 0.5 else "delivered"
    ts, out = t0, []
    for step in steps:
        ts += rng.randrange(1, 90)
        failed = step == "failed"
        out.append((ts, status_json(
            wid=wid, status=step, ts=ts, recipient=recipient, callback=callback,
            category=category if step == priced and not failed else None,
            conversation=conversation if step in ("sent", "delivered") and not failed else None,
            error=rng.choice(FAILURES) if failed else None,
        )))
    return out


def receiver_body(n: int, rng: random.Random, t0: int = 1_764_000_000) -> bytes:
    """One POST body of 1-2 statuses (≈ 600-1,000 bytes); `wamid.bench<n>.` makes it findable."""
    count = 1 if rng.random() < 0.6 else 2
    statuses = []
    for k in range(count):
        category = rng.choice(CATEGORIES)
        statuses.append(status_json(
            wid=f"wamid.bench{n}.{k}.{wamid(rng)[10:40]}", status=rng.choice(("sent", "delivered", "read")),
            ts=t0 + n, recipient=f"{rng.randrange(10**10, 10**11)}", callback=message_id(n),
            category=category, conversation=uuid.UUID(int=rng.getrandbits(128)).hex,
        ))
    return envelope_json(statuses)


def inbound_body(sender: str, text: str, mid: str, ts: int) -> bytes:
    doc = {"object": "whatsapp_business_account", "entry": [{"id": WABA_ID, "changes": [{"field": "messages",
           "value": {"messaging_product": "whatsapp",
                     "metadata": {"display_phone_number": DISPLAY_NUMBER, "phone_number_id": PHONE_NUMBER_ID},
                     "contacts": [{"profile": {"name": "Jane"}, "wa_id": sender}],
                     "messages": [{"from": sender, "id": mid, "timestamp": str(ts), "type": "text",
                                   "text": {"body": text}}]}}]}]}
    return json.dumps(doc, separators=(",", ":")).encode()


def signed_receiver_request(app_secret: str, n: int) -> tuple[bytes, list[tuple[str, str]]]:
    """POST n of the receiver benchmark: a seeded body and Meta's signature header."""
    from pipeline.channels.whatsapp_webhooks import SIGNATURE_HEADER, sign

    body = receiver_body(n, random.Random(n))
    return body, [("Content-Type", "application/json"), (SIGNATURE_HEADER, sign(body, app_secret))]
