"""The campaign flow's optional personalisation task (pipeline/render/personalise.py): between render and
estimate, for specs with `generate:`. It publishes what the model wrote as a masked sample, with the counts of
values used, fallbacks by reason, calls, cache hits, tokens and cost, where the run's other artifacts are."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.artifacts import artifact_key
from pipeline import store
from pipeline.masking import mask_text
from pipeline.render.personalise import GenerationReport, personalise
from pipeline.render.prepare import Prepared
from pipeline.spec import CampaignSpec


def summary(report: GenerationReport) -> dict[str, Any]:
    return {"rows": report.rows, "generated": report.generated, "fallbacks": dict(report.fallbacks),
            "calls": report.calls, "cache_hits": report.cache_hits, "prompt_tokens": report.prompt_tokens,
            "completion_tokens": report.completion_tokens, "cost_usd": round(report.cost_usd, 6),
            # Masked here, once: the artifact and the approval view (flows/approval.py) show the same sample.
            "samples": [(name, mask_text(value)) for name, value in report.samples]}


@task(name="personalise", cache_policy=NO_CACHE)
def personalise_task(spec: CampaignSpec, campaign_id: str, database: str,
                     prepared: Prepared) -> tuple[Prepared, dict[str, Any]]:
    with store.connect(database) as db:
        prepared, report = personalise(db, spec, prepared)
    info = summary(report)
    get_run_logger().info("personalise: %(generated)d written by the model, fallbacks %(fallbacks)s, %(calls)d "
                          "calls, %(cache_hits)d cached, USD %(cost_usd).4f", info)
    sample = "\n".join(f"- `{name}`: {value}" for name, value in info["samples"]) or "- (none)"
    create_markdown_artifact(
        f"**Model-written values** ({info['generated']} used, fallbacks {info['fallbacks'] or 'none'}; "
        f"{info['calls']} calls, {info['cache_hits']} from the cache, USD {info['cost_usd']:.4f})\n\n{sample}",
        key=artifact_key(campaign_id, "personalise"))
    return prepared, info
