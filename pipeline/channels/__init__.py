"""The channel registry: one module per provider, listed explicitly (no directory scanning)."""

from __future__ import annotations

import os
from collections.abc import Callable

from pipeline.channels.base import Channel, HttpChannel, Outgoing, SendOutcome, SendRequest
from pipeline.channels.whatsapp import WhatsAppChannel
from pipeline.spec import CampaignSpec, SpecError

__all__ = ["Channel", "HttpChannel", "Outgoing", "SendOutcome", "SendRequest", "WhatsAppChannel", "channel_for"]


def _whatsapp(spec: CampaignSpec, base_url: str | None, sender: str) -> Channel:
    env = WhatsAppChannel.credentials
    return WhatsAppChannel(
        base_url=base_url or spec.provider.base_url or "https://graph.facebook.com",
        api_version=spec.provider.api_version or "v23.0",
        phone_number_id=sender,
        access_token=spec.secret("access_token", env["access_token"]),
    )


_REGISTRY: dict[str, Callable[[CampaignSpec, str | None, str], Channel]] = {"whatsapp": _whatsapp}


def available_channels() -> list[str]:
    return sorted(_REGISTRY)


def channel_for(spec: CampaignSpec, *, base_url: str | None = None, sender: str | None = None) -> Channel:
    """The channel a spec sends through (for one of its senders, the first by default);
    `base_url` (or CAMPAIGN_PROVIDER_BASE_URL) points it elsewhere."""
    factory = _REGISTRY.get(spec.channel)
    if factory is None:
        raise SpecError(f"channel: {spec.channel!r} is not available yet (available: {available_channels()})")
    return factory(spec, base_url or os.environ.get("CAMPAIGN_PROVIDER_BASE_URL"), sender or spec.sender)
