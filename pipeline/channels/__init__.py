"""The channels: one module per provider that builds its real wire request, classifies its answers
(retry, permanent, stop) and parses its receipts with their signature checks; this module is the
registry, listing them explicitly (no directory scanning). Used by dispatch, receipts and the sandbox."""

from __future__ import annotations

import os
from collections.abc import Callable

from pipeline.channels import alibaba_sms, chatapp, email, messenger, twilio_sms, viber
from pipeline.channels.base import Channel, HttpChannel, Outgoing, SendOutcome, SendRequest
from pipeline.channels.whatsapp import WhatsAppChannel
from pipeline.spec import CampaignSpec, SpecError

__all__ = [
    "Channel", "HttpChannel", "Outgoing", "SendOutcome", "SendRequest", "WhatsAppChannel", "available_channels",
    "channel_for",
]

Factory = Callable[[CampaignSpec, str | None, str], Channel]


def _whatsapp(spec: CampaignSpec, base_url: str | None, sender: str) -> Channel:
    env = WhatsAppChannel.credentials
    return WhatsAppChannel(
        base_url=base_url or spec.provider.base_url or "https://graph.facebook.com",
        api_version=spec.provider.api_version or "v23.0",
        phone_number_id=sender,
        access_token=spec.secret("access_token", env["access_token"]),
    )


def _per_sender(factory: Callable[[CampaignSpec, str | None], Channel]) -> Factory:
    """Providers whose sender is the spec's own (a Page, a bot, an account): one per spec."""
    def build(spec: CampaignSpec, base_url: str | None, sender: str) -> Channel:
        if sender != spec.sender:
            spec = spec.model_copy(update={"sender": sender})
        return factory(spec, base_url)
    return build


# SMS has two providers; a spec picks one with provider.options.provider (default: twilio).
SMS_PROVIDERS: dict[str, Factory] = {"twilio": twilio_sms.from_spec, "alibaba_sms": alibaba_sms.from_spec}


def _sms(spec: CampaignSpec, base_url: str | None, sender: str) -> Channel:
    name = str(spec.provider.options.get("provider", "twilio"))
    factory = SMS_PROVIDERS.get(name)
    if factory is None:
        raise SpecError(f"provider.options.provider: {name!r} is not an SMS provider (one of {sorted(SMS_PROVIDERS)})")
    return factory(spec, base_url, sender)


_REGISTRY: dict[str, Factory] = {
    "whatsapp": _whatsapp,
    "messenger": _per_sender(messenger.from_spec),
    "instagram": _per_sender(messenger.instagram_from_spec),
    "viber": _per_sender(viber.from_spec),
    "sms": _sms,
    "email": email.from_spec,
    "chatapp": chatapp.from_spec,
}


def available_channels() -> list[str]:
    return sorted(_REGISTRY)


def channel_for(spec: CampaignSpec, *, base_url: str | None = None, sender: str | None = None) -> Channel:
    """The channel a spec sends through (for one of its senders, the first by default);
    `base_url` (or CAMPAIGN_PROVIDER_BASE_URL) points it elsewhere."""
    factory = _REGISTRY.get(spec.channel)
    if factory is None:
        raise SpecError(f"channel: {spec.channel!r} is not available (available: {available_channels()})")
    return factory(spec, base_url or os.environ.get("CAMPAIGN_PROVIDER_BASE_URL"), sender or spec.sender)
