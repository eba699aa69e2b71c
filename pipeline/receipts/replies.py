"""Replies and button taps: which taps opt a recipient out, and which campaign message each reply answers.

An opt-out is a quick-reply button a campaign spec marks `opt_out: true` (the demo's STOP_PROMOS): ingest
suppresses whoever taps it on that channel, as a STOP reply does (pipeline/receipts/ingest.py). The payloads
are read from the specs of the campaigns in the store, once per ingest call, bounded by
CAMPAIGN_MAX_OPT_OUT_PAYLOADS (default 10,000; more is an error naming the setting, never a silent cut).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from pipeline.spec import SpecError, positive_setting
from pipeline.store import Store

MAX_PAYLOADS_ENV = "CAMPAIGN_MAX_OPT_OUT_PAYLOADS"
DEFAULT_MAX_PAYLOADS = 10_000


def opt_out_payloads(db: Store, environ: Mapping[str, str] = os.environ) -> frozenset[str]:
    """Every quick-reply payload a campaign of the store marks as an opt-out."""
    limit = positive_setting(MAX_PAYLOADS_ENV, DEFAULT_MAX_PAYLOADS, environ)
    found: set[str] = set()
    # Only specs that mention an opt-out are parsed: most campaigns have none.
    for (raw,) in db.rows("SELECT spec_json FROM campaigns WHERE spec_json LIKE :marked", marked='%"opt_out":true%'):
        try:
            buttons = json.loads(raw).get("template", {}).get("buttons") or []
        except (ValueError, AttributeError):
            continue  # a spec the store holds was valid when stored; an unreadable one names no payload
        found.update(b["payload"] for b in buttons if isinstance(b, dict) and b.get("opt_out") and b.get("payload"))
        if len(found) > limit:
            raise SpecError(f"{MAX_PAYLOADS_ENV}: more than {limit} opt-out payloads across the store's campaigns")
    return frozenset(found)
