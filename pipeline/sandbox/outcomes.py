"""What happens to a message the sandbox accepted: its deterministic fate and the status objects
Meta would report for it (sent -> delivered -> read, or sent -> failed)."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any, Literal

from pipeline.sandbox.kit import pick

Final = Literal["read", "delivered", "failed"]

ERROR_HREF = "https://developers.facebook.com/documentation/business-messaging/whatsapp/support/error-codes"

# Real failure codes and (title, details) as Meta words them; weights give the mix among failures.
FAILURES: dict[int, tuple[str, str]] = {
    131026: (
        "Message undeliverable",
        "Unable to deliver message. Reasons can include: the recipient phone number is not a WhatsApp "
        "phone number; the recipient has not accepted the new Terms of Service and Privacy Policy; "
        "the recipient is using an old WhatsApp version.",
    ),
    131049: (
        "This message was not delivered to maintain healthy ecosystem engagement.",
        "In order to maintain a healthy ecosystem engagement, the message failed to be delivered.",
    ),
    131050: (
        "Unable to deliver the message. This recipient has chosen to stop receiving marketing "
        "messages on WhatsApp from your business.",
        "Recipient has stopped marketing messages from this business.",
    ),
}
FAILURE_WEIGHTS: tuple[tuple[int, float], ...] = ((131026, 0.7), (131049, 0.2), (131050, 0.1))


@dataclass(frozen=True)
class Outcome:
    final: Final
    error_code: int | None  # set when final == "failed"
    out_of_order: bool  # the last two statuses are posted in reverse order
    pricing_on_sent: bool  # pricing rides on `sent` instead of `delivered`


def wa_id(to: str) -> str:
    """The WhatsApp id Meta reports for an address: its digits (no `+`, spaces or dashes)."""
    return "".join(ch for ch in to if ch.isdigit())


def outcome_for(
    seed: int, to: str, *, fail_rate: float, read_rate: float, out_of_order_rate: float
) -> Outcome:
    """The fate of a message to `to`: a pure function of (seed, recipient digits), so tests can
    predict it; independent uniform draws come from one SHA-256 digest."""
    digest = hashlib.sha256(f"{seed}|{wa_id(to)}".encode()).digest()
    u = [int.from_bytes(digest[i : i + 6], "big") / 2**48 for i in range(0, 30, 6)]
    if u[0] < fail_rate:
        final: Final = "failed"
        error_code: int | None = _pick_failure(u[1])
    else:
        final, error_code = ("read" if u[2] < read_rate else "delivered"), None
    return Outcome(final, error_code, out_of_order=u[3] < out_of_order_rate, pricing_on_sent=u[4] < 0.5)


def _pick_failure(u: float) -> int:
    return pick(u, FAILURE_WEIGHTS)


@dataclass(frozen=True)
class Pricing:
    category: str
    type: str  # regular | free_customer_service | free_entry_point
    billable: bool

    def as_json(self) -> dict[str, Any]:
        return {"billable": self.billable, "pricing_model": "PMP", "type": self.type, "category": self.category}


@dataclass(frozen=True)
class PlannedStatus:
    post_after_s: float  # seconds after acceptance the webhook is due
    status: dict[str, Any]


def plan_statuses(
    outcome: Outcome,
    *,
    wamid: str,
    recipient_id: str,
    callback_data: str | None,
    pricing: Pricing,
    accepted_at: float,
    delay_s: tuple[float, float],
    rng: random.Random,
) -> list[PlannedStatus]:
    """The status objects for one message with the time each is due.

    Event timestamps stay in logical order; only posting order is shuffled for out-of-order
    messages, as Meta's are ("use `timestamp`"). Pricing appears on exactly one of sent/delivered,
    and not at all for a failed message, which is not charged.
    """
    steps = ["sent", "failed"] if outcome.final == "failed" else ["sent", "delivered"]
    if outcome.final == "read":
        steps.append("read")
    offsets: list[float] = []
    elapsed = 0.0
    for _ in steps:
        elapsed += rng.uniform(*delay_s)
        offsets.append(elapsed)
    post_offsets = list(offsets)
    if outcome.out_of_order:
        post_offsets[-1], post_offsets[-2] = post_offsets[-2], post_offsets[-1]
    priced = None
    if outcome.final != "failed":
        priced = "sent" if outcome.pricing_on_sent else "delivered"
    planned = []
    for step, offset, post_offset in zip(steps, offsets, post_offsets, strict=True):
        status: dict[str, Any] = {
            "id": wamid,
            "status": step,
            "timestamp": str(int(accepted_at + offset)),
            "recipient_id": recipient_id,
        }
        if callback_data is not None:
            status["biz_opaque_callback_data"] = callback_data
        if step == priced:
            status["pricing"] = pricing.as_json()
        if step == "failed":
            status["errors"] = [failure_error(outcome.error_code or 131026)]
        planned.append(PlannedStatus(post_offset, status))
    return planned


def failure_error(code: int) -> dict[str, Any]:
    title, details = FAILURES.get(code, ("Message failed to send", "Message failed to send."))
    return {"code": code, "title": title, "message": title, "error_data": {"details": details}, "href": ERROR_HREF}
