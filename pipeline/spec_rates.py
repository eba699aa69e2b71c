"""The providers' send-rate limits a campaign spec's `rate_limit` is checked against (pipeline/spec.py), as
docs/providers.md states them. Here, beside the spec, because the spec may not import the channels
(tests/test_layout.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple


class RateCeiling(NamedTuple):
    """A provider's send-rate limit as docs/providers.md states it (`section`)."""

    per_second: float
    what: str  # "Send API calls/s per Page"
    section: str
    # Shared by every sender of the spec (their credentials name one account), where the rate is each sender's.
    per_account: bool = False
    # A provider option under which the limited call is not the one used (Chat App's mass send).
    unless_option: str | None = None


# Per channel; one not listed keeps RateSpec's own 1,000/s. Viber, Twilio SMS and e-mail name no rate, and Alibaba
# SMS's 5,000 calls/s per account (§6.1) is above it. WhatsApp's is the upgraded level: a number still at the default
# one (80/s) is slowed to that when its lane starts (pipeline/channels/whatsapp.py reads the level).
RATE_CEILINGS: dict[str, RateCeiling] = {
    "whatsapp": RateCeiling(1000, "messages/s per phone number (the upgraded throughput level)", "§1.7"),
    "messenger": RateCeiling(300, "Send API calls/s per Page", "§5.1"),
    "instagram": RateCeiling(300, "Send API calls/s per Instagram professional account", "§5.2"),
    # Without mass_send each message is one SendChatappMessage call; the docs name no rate for the mass send.
    "chatapp": RateCeiling(250, "SendChatappMessage calls/s per Alibaba Cloud account", "§3.1", per_account=True,
                           unless_option="mass_send"),
}


RATE_CEILING_ERROR = "rate_ceiling"


def rate_ceiling_refusal(field: str, rate_s: float, channel: str, options: Mapping[str, Any],
                         senders: int = 1) -> str | None:
    """Why `rate_s` (the spec's messages/s per sender) is over the channel's ceiling (one line naming `field`),
    or None."""
    ceiling = RATE_CEILINGS.get(channel)
    if ceiling is None or (ceiling.unless_option and options.get(ceiling.unless_option)):
        return None
    total = rate_s * senders if ceiling.per_account else rate_s
    if total <= ceiling.per_second:
        return None
    over = f"over {channel}'s {ceiling.per_second:g} {ceiling.what} (docs/providers.md {ceiling.section}"
    if total != rate_s:
        return f"{field}: {rate_s:g} for each of {senders} senders is {total:g}/s, {over})"
    scope = "shared by the account's senders" if ceiling.per_account else "the rate applies to each sender"
    return f"{field}: {rate_s:g} is {over}; {scope})"
