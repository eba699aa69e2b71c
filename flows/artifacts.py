"""Prefect artifacts of a campaign run: reject summary, cost table, link to the HTML report."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from pipeline.costs.report import report_artifacts
from pipeline.render.prepare import Prepared
from pipeline.store import Store


def artifact_key(campaign_id: str, what: str) -> str:
    # Prefect keys allow lowercase letters, digits and dashes only.
    return re.sub(r"[^a-z0-9-]+", "-", f"{campaign_id}-{what}".lower()).strip("-")


def publish_rejects(campaign_id: str, prepared: Prepared) -> None:
    rows = [{"reason": reason, "rows": n} for reason, n in sorted(prepared.counts.items(), key=lambda kv: -kv[1])]
    create_table_artifact(
        rows or [{"reason": "(none)", "rows": 0}], key=artifact_key(campaign_id, "rejects"),
        description=f"Rejected rows by reason: {prepared.rejects.height} of {prepared.rows_read} rows",
    )


def publish_report(db: Store, campaign_id: str, summary: dict[str, Any], files: Any) -> None:
    data = report_artifacts(db, campaign_id)
    create_table_artifact(
        data["table"] or [{"country": "(none)"}], key=artifact_key(campaign_id, "costs"),
        description="Cost by channel, country and category (USD)",
    )
    if data["failures"]:
        create_table_artifact(data["failures"], key=artifact_key(campaign_id, "failures"),
                              description="Failures by error code, with meaning")
    create_markdown_artifact(
        "\n".join([
            data["markdown"],
            "",
            f"- rows read {summary['rows_read']}, accepted {summary['accepted']}, rejected {summary['rejected']}",
            f"- HTML report: [{files.html}](file://{Path(files.html).resolve()})",
        ]),
        key=artifact_key(campaign_id, "summary"), description="Campaign summary and cost",
    )
