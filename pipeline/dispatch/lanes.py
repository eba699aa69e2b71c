"""A sender's lane of the dispatch (pipeline/dispatch/engine.py): its limiter, its queue of claimed messages, its
sessions, and the rate it may send at."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pipeline.channels.base import Channel, SenderRateUnknown
from pipeline.dispatch.ledger import Pending
from pipeline.dispatch.ratelimit import BusiestSecond, SlotLimiter
from pipeline.spec import RateSpec

log = logging.getLogger(__name__)


class Lane:
    def __init__(self, sender: str, channel: Channel, rate: RateSpec) -> None:
        self.sender = sender
        self.channel = channel
        self.limiter = SlotLimiter(rate.max_per_second)
        self.busiest = BusiestSecond()  # what the limiter let out, at this clock (the result's busiest_second)
        self.queue: asyncio.Queue[tuple[Pending, int]] = asyncio.Queue(
            maxsize=max(rate.concurrency, channel.max_batch) * 2
        )
        self.sessions: asyncio.Queue[Any] = asyncio.Queue()
        self.outstanding = 0
        self.fed_all = False
        self.lost = False  # its lease went to another dispatcher: nothing more is sent for this sender

    @property
    def done(self) -> bool:
        return self.fed_all and self.outstanding == 0


async def sender_rate(channel: Channel, sender: str, session: Any, rate: RateSpec) -> RateSpec:
    """The spec's `rate`, or what the provider allows this sender now when that is less (a WhatsApp number at the
    standard throughput level, pipeline/channels/whatsapp.py); read once, as its lane starts. A read that fails
    keeps the spec's rate: the provider's throttling answers still slow the lane down."""
    read = getattr(channel, "sender_rate", None)
    if read is None:
        return rate
    spec_rate = rate.max_per_second
    try:
        allowed = await read(session)
    except SenderRateUnknown as exc:
        log.warning("dispatch: sender %s: its rate at the provider is unknown (%s); it sends at the spec's %g/s",
                    sender, exc, spec_rate)
        return rate
    if allowed is None or allowed.per_second >= spec_rate:
        return rate
    log.warning("dispatch: sender %s is at %s; it sends at %g/s, not the spec's %g/s",
                sender, allowed.why, allowed.per_second, spec_rate)
    return rate.model_copy(update={"max_per_second": allowed.per_second})


def planned_ids(channel: Channel, batch: list[tuple[Pending, int]]) -> list[str | None] | None:
    """The provider ids the batch's messages will be known by before the provider answers, when the
    channel names them itself (ChatApp mass sends); None when every receipt carries our own id."""
    plan = getattr(channel, "planned_provider_ids", None)
    if plan is None:
        return None
    planned = plan([item.payload_json for item, _ in batch])
    return planned if any(planned) else None
