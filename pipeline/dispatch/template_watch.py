"""Watching the template and the sending numbers while a campaign sends (docs/providers.md §1.11).

Every tick of the dispatcher (half a second, on its ledger thread) `poll` brings newly spooled webhooks into the
store (receipts ingest applies the template and number updates to the registry, pipeline/channels/templates.py)
and reads the registry: a template that is no longer APPROVED stops the channel (everything unsent stays
queued); a number rated RED or FLAGGED / RESTRICTED pauses its own lane while the others go on; a YELLOW number's
lane is slowed by a configurable factor (CAMPAIGN_YELLOW_RATE_FACTOR); a re-categorised template moves the campaign's
still-queued messages to its new category (sent ones keep theirs: the report prices both). The first 132000-family
answer stops the channel on its own (pipeline/channels/whatsapp.py), whichever comes first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pipeline.channels import templates as registry
from pipeline.channels.whatsapp import TEMPLATE_STOP_CODES
from pipeline.store import Store

log = logging.getLogger(__name__)
TEMPLATE_STOP = "template:"  # how a stop for the template begins (the run ends not completed)
NUMBER_STOP = "number:"
CATEGORIES = frozenset({"marketing", "utility", "authentication"})  # template categories an outbox row may carry


def ends_not_completed(reason: str | None) -> bool:
    """Whether a dispatch stopped for this reason leaves the run not completed (the template or a number)."""
    if not reason:
        return False
    head = reason.split(":", 1)[0]
    return reason.startswith((TEMPLATE_STOP, NUMBER_STOP)) or (head.isdigit() and int(head) in TEMPLATE_STOP_CODES)


class TemplateWatch:
    def __init__(self, db: Store, *, provider: str, account: str, name: str, language: str, senders: list[str],
                 ingest: Callable[[], Any] | None = None, slow_factor: float | None = None,
                 campaign_id: str | None = None) -> None:
        self.db, self.provider, self.account, self.name, self.language = db, provider, account, name, language
        self.campaign_id = campaign_id  # given: a re-categorisation moves what is still queued to the new category
        self.category: str | None = None
        self.senders = senders
        self.ingest = ingest
        self.slow_factor = registry.slow_factor() if slow_factor is None else slow_factor
        self.reason: str | None = None
        self.lanes: dict[str, tuple[float, str | None]] = {}

    def poll(self) -> None:
        """Blocking (the store, and the spool when it ingests): call it off the event loop."""
        if self.ingest is not None:
            self.ingest()
        t = registry.template(self.db, self.provider, self.name, self.language, self.account)
        if t is not None and t.status != registry.SENDABLE and self.reason is None:
            self.reason = (f"{TEMPLATE_STOP} {self.name} [{self.language}] is {t.status} at {self.provider}"
                           f"{f' ({t.reason})' if t.reason else ''}; the channel stopped, everything unsent stays "
                           "queued and a later run continues once it is APPROVED again")
            log.error("%s", self.reason)
        if t is not None and self.campaign_id is not None and t.pipeline_category in CATEGORIES:
            self._follow_category(t.pipeline_category)
        for n in registry.numbers(self.db, self.provider):
            if n.account == self.account and n.phone_number_id in self.senders:
                factor, why = n.lane_verdict(self.slow_factor)
                self.lanes[n.phone_number_id] = (factor, f"{NUMBER_STOP} {why}" if why else None)

    def _follow_category(self, category: str) -> None:
        """Meta re-categorised the template (template_category_update): what is still queued goes, and is priced,
        at the new category; what was sent keeps the category it went at, so the report prices each part at its own
        (pipeline/costs/costing.py groups by category). Claimed messages already on their way keep theirs."""
        if category == self.category:
            return
        moved = self.db.execute("""UPDATE outbox SET category = :new WHERE campaign_id = :c AND state = 'queued'
                                   AND category <> :new AND category IN ('marketing', 'utility', 'authentication')""",
                                new=category, c=self.campaign_id)
        if moved:
            log.warning("template %s [%s] is %s at %s now: %d queued messages go (and are priced) at that category",
                        self.name, self.language, category, self.provider, moved)
        self.category = category

    def lane_paused(self, sender: str) -> str | None:
        return self.lanes.get(sender, (1.0, None))[1]

    def lane_factor(self, sender: str) -> float:
        factor = self.lanes.get(sender, (1.0, None))[0]
        return factor if factor > 0 else 1.0

    def messaging_limit(self) -> int | None | bool:
        """The provider's messaging limit for these senders (the lowest tier among them; the limit is the
        portfolio's since Oct 2025, §1.6), or False when the registry knows none of them."""
        tiers = [n.messaging_limit for n in registry.numbers(self.db, self.provider)
                 if n.account == self.account and n.phone_number_id in self.senders and n.messaging_limit_tier]
        if not tiers:
            return False
        limited = [t for t in tiers if t is not None]
        return min(limited) if limited else None
