"""The channel registry: one module per provider, listed explicitly (no directory scanning)."""

from __future__ import annotations

import os

from pipeline.channels.base import Channel, SendOutcome, SendRequest
from pipeline.channels.whatsapp import WhatsAppChannel
from pipeline.spec import CampaignSpec, SpecError

__all__ = ["Channel", "SendOutcome", "SendRequest", "WhatsAppChannel", "channel_for"]


def _whatsapp(spec: CampaignSpec, base_url: str | None) -> Channel:
    return WhatsAppChannel(
        base_url=base_url or spec.provider.base_url,
        api_version=spec.provider.api_version,
        phone_number_id=spec.sender,
        access_token=spec.credentials.secret("access_token_env"),
    )


_REGISTRY = {"whatsapp": _whatsapp}


def channel_for(spec: CampaignSpec, *, base_url: str | None = None) -> Channel:
    """The channel a spec sends through; `base_url` (or CAMPAIGN_PROVIDER_BASE_URL) points it elsewhere."""
    factory = _REGISTRY.get(spec.channel)
    if factory is None:
        raise SpecError(f"channel: {spec.channel!r} is not available yet (available: {sorted(_REGISTRY)})")
    return factory(spec, base_url or os.environ.get("CAMPAIGN_PROVIDER_BASE_URL"))
