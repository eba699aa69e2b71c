"""The bounds on rendering: the longest message each channel takes (with where docs/providers.md states
it) and the budget a template has for rendering one message, with their defaults and settings."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace

from pipeline.render.signed_sms import SignedSms
from pipeline.spec import CampaignSpec, positive_setting

# channel -> (characters in one rendered text or template parameter, where the number comes from)
MESSAGE_CHARS: dict[str, tuple[int, str]] = {
    "whatsapp": (1_024, "template body text, Meta's template rules (docs/providers.md §1.2: free-form text 4,096)"),
    "chatapp": (1_024, "ChatApp sends templates (docs/providers.md §3.2 states no length): the WhatsApp body limit"),
    "messenger": (2_000, "Send API text, Meta's Send API reference (not stated in docs/providers.md §5.1)"),
    "instagram": (1_000, "docs/providers.md §5.2"),
    "viber": (7_000, "docs/providers.md §4.1"),
    "sms": (1_600, "Twilio `Body`, docs/providers.md §6.2 (Alibaba SMS: 500 with the signature, §6.1: signed_sms.py)"),
    "email": (256 * 1024, "no limit over SMTP (docs/providers.md §7.1); our bound for one personalised body"),
}
DEFAULT_MESSAGE_CHARS = 4_096  # a channel the table does not know
# Per message: characters a template may build (every value and output, added up) and steps it may
# take (loop iterations, calls, values built), so a template cannot spend unbounded memory or time.
DEFAULT_TEMPLATE_CHARS = 4 * 1024 * 1024
DEFAULT_TEMPLATE_STEPS = 10_000
MESSAGE_ENV = "CAMPAIGN_MAX_MESSAGE_CHARS"
TEMPLATE_CHARS_ENV, TEMPLATE_STEPS_ENV = "CAMPAIGN_MAX_TEMPLATE_CHARS", "CAMPAIGN_MAX_TEMPLATE_STEPS"


@dataclass(frozen=True)
class RenderLimits:
    """What one rendered message may be, and what rendering it may cost."""

    channel: str | None = None
    max_message_chars: int = DEFAULT_MESSAGE_CHARS  # the text and each template parameter
    max_template_chars: int = DEFAULT_TEMPLATE_CHARS
    max_template_steps: int = DEFAULT_TEMPLATE_STEPS
    signed_sms: SignedSms | None = None  # Alibaba SMS: signature + text, per row (its signature is the row's)

    @classmethod
    def for_channel(
        cls, channel: str | None, environ: Mapping[str, str] = os.environ, *, max_message_chars: int | None = None
    ) -> RenderLimits:
        """`channel`'s limits: `max_message_chars` (a command-line option) wins over CAMPAIGN_MAX_MESSAGE_CHARS,
        which wins over the channel's own limit; CAMPAIGN_MAX_TEMPLATE_CHARS / _STEPS set the template budget."""
        own = MESSAGE_CHARS.get(channel or "", (DEFAULT_MESSAGE_CHARS, ""))[0]
        return cls(
            channel=channel,
            max_message_chars=max_message_chars or positive_setting(MESSAGE_ENV, own, environ),
            max_template_chars=positive_setting(TEMPLATE_CHARS_ENV, DEFAULT_TEMPLATE_CHARS, environ),
            max_template_steps=positive_setting(TEMPLATE_STEPS_ENV, DEFAULT_TEMPLATE_STEPS, environ),
        )

    @classmethod
    def for_spec(cls, spec: CampaignSpec, environ: Mapping[str, str] = os.environ) -> RenderLimits:
        """for_channel(spec.channel), with the bounds of the spec's provider (Alibaba SMS's 500 with the signature)."""
        return replace(cls.for_channel(spec.channel, environ), signed_sms=SignedSms.of_spec(spec))

    def too_long(self, part: str, chars: int) -> str:
        """The reject detail of a rendered `part` of `chars` characters."""
        whose = f"a {self.channel} message" if self.channel else "a message"
        return f"{part} renders {chars:,} characters, over the {self.max_message_chars:,} {whose} may hold"
