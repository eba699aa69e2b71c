"""Free-form session messages for a prepared audience: recipients whose 24-hour customer-service window is open
(their last inbound message, from the store) are queued with the spec's `template.session` message, the others
with the template or rejected `outside_window` (pipeline/audience/windows.py `session_window`)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import polars as pl

from pipeline.audience.windows import session_window, whatsapp_last_inbound
from pipeline.render.prepare import Prepared
from pipeline.spec import CampaignSpec, SpecError
from pipeline.store import Store

# Channels whose free-form messages the pipeline sends: WhatsApp itself and WhatsApp through Chat App.
SESSION_CHANNELS = frozenset({"whatsapp", "chatapp"})


def with_sessions(db: Store, spec: CampaignSpec, prepared: Prepared, now: datetime | None = None) -> Prepared:
    """`prepared` with its in-window recipients marked for the session message and, when the spec says
    `outside_window: reject`, the others moved to the rejects."""
    session = spec.template.session
    if session is None:
        return prepared
    if spec.channel not in SESSION_CHANNELS or (
            spec.channel == "chatapp" and spec.provider.options.get("channel_type") != "whatsapp"):
        raise SpecError("template.session: free-form session messages go to WhatsApp (or WhatsApp through Chat App)")
    last = whatsapp_last_inbound(db, "whatsapp" if spec.channel == "whatsapp" else "chatapp")
    accepted, rejected = session_window(prepared.accepted, last_inbound=last, now=now or datetime.now(UTC),
                                        outside=session.outside_window)
    if rejected.is_empty():
        return replace(prepared, accepted=accepted)
    rows = rejected.join(prepared.accepted.drop("text", "params_json", strict=False), on="row_number", how="left")
    rejects = pl.concat([prepared.rejects, rows.select(prepared.rejects.columns)], how="vertical_relaxed")
    counts = {**prepared.counts, "outside_window": prepared.counts.get("outside_window", 0) + rejected.height}
    return replace(prepared, accepted=accepted, rejects=rejects.sort("row_number"), counts=counts,
                   accepted_rows=accepted.height)
