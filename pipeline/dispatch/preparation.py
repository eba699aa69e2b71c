"""The campaign's preparation as one call: what the store says about the audience (suppressions, the team's
frequency cap, the template's languages at the provider) handed to the preparation chain.

The campaign flow's prepare task and test sends (pipeline/dispatch/test_sends.py) both call it, so a test send
renders a row exactly as the campaign will. The flow passes its own preparer (in this process or chunked on Dask);
anything else prepares in this process, which gives the same rows (pipeline/render/prepare_chunks.py merges to it).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pipeline import store
from pipeline.audience.frequency import app_of, capped_meanwhile, describe, frequency_cap_for
from pipeline.audience.policy import blocked_policy
from pipeline.audience.windows import last_inbound_times
from pipeline.channels.template_sync import registry_target
from pipeline.channels.templates import approved_languages
from pipeline.render.limits import RenderLimits
from pipeline.render.prepare import Prepared, prepare_audience
from pipeline.render.prepare_ids import id_channel, prepare_ids
from pipeline.render.sessions import with_sessions
from pipeline.spec import CampaignSpec, SpecError, chatapp_audience_refusal


def prepare_campaign(
    spec: CampaignSpec, campaign_id: str, database: str, out_dir: Path,
    preparer: Callable[..., Prepared] = prepare_audience, audience: Path | None = None,
) -> Prepared:
    """The campaign's audience (or `audience`, e.g. an uploaded file) prepared with the store's suppressions and
    caps; the campaign's own sends do not cap it (a resumed campaign must not cap itself)."""
    refusal = chatapp_audience_refusal(spec, audience)  # an uploaded file is checked as the spec's own was
    if refusal:
        raise SpecError(refusal)
    source = audience or spec.audience
    by_id = id_channel(spec.channel, spec.provider.options)  # Chat App to Messenger/Instagram too
    if by_id:  # PSIDs, Viber ids, e-mail addresses: no frequency cap
        with store.connect(database) as db:
            suppressed = store.suppression_reasons(db, spec.channel)
            last_inbound = last_inbound_times(db, spec.channel)
        return prepare_ids(
            source, channel=by_id, category=spec.template.category, template=spec.template,
            variables=spec.variables, suppressed=suppressed, last_inbound=last_inbound,
            message_tag=spec.provider.options.get("message_tag"), out_dir=out_dir,
        )
    # The team's cap across campaigns and the channels reaching the same app, read while the first batches'
    # numbers are checked (frequency.capped_meanwhile).
    cap = frequency_cap_for(spec)
    with capped_meanwhile(database, cap, exclude_campaign=campaign_id, app=app_of(spec)) as capped:
        with store.connect(database) as db:
            suppressed = store.suppression_reasons(db, spec.channel)  # address -> why: rejects say how they opted out
            # The languages the template exists in at the provider (the registry), when the spec names its account.
            target = registry_target(spec)
            languages = approved_languages(db, *target, spec.template.name) if target else ()
        prepared = preparer(
            source, channel=spec.channel, category=spec.template.category, template=spec.template,
            variables=spec.variables, policy=blocked_policy(spec.channel, spec.blocked_countries),
            suppressed=frozenset(suppressed), suppression_reasons=suppressed, recently_messaged=capped,
            out_dir=out_dir, frequency_detail=describe(cap), capped_categories=frozenset(cap.categories),
            languages=languages, render_limits=RenderLimits.for_spec(spec),  # the provider's bounds too
        )
    if spec.template.session is not None:  # free-form to open windows; the template or a reject for the rest
        with store.connect(database) as db:
            prepared = with_sessions(db, spec, prepared)
    return prepared
