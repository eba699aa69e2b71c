"""The approval part of a campaign's report: every request to approve the campaign before it sent, and its answer
(who approved, rejected or was refused, when, with what comment, and the estimate and message count they were
shown), as `approvals.csv` beside the cost report, a table in report.html and a section of report.md.

Read from the store's `campaign_approvals` (written by pipeline/dispatch/approvals.py; costs/ reads the tables of
later stages, never their modules). Names and comments are free text: masked, as every other text of a report.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import polars as pl

from pipeline.costs.exports import md_cell, write_csv
from pipeline.masking import mask_text
from pipeline.store import Store, utc

COLUMNS = ("requested_at", "origin", "requested_by", "messages", "estimate_usd", "decision", "approver",
           "decided_at", "comment")
SCHEMA = {"requested_at": pl.String, "origin": pl.String, "requested_by": pl.String, "messages": pl.Int64,
          "estimate_usd": pl.String, "decision": pl.String, "approver": pl.String, "decided_at": pl.String,
          "comment": pl.String}


def approval_rows(db: Store, campaign_id: str) -> list[dict[str, Any]]:
    """The campaign's approval requests, oldest first, as the report shows them; a pending one past its time is
    `expired`. Empty for a campaign that needed none."""
    rows = db.rows(f"SELECT {', '.join(COLUMNS)}, expires_at FROM campaign_approvals WHERE campaign_id = :c "
                   "ORDER BY requested_at, request_id", c=campaign_id)
    now, out = datetime.now(UTC), []
    for row in rows:
        item = dict(zip(COLUMNS, row[:-1], strict=True))
        expires = utc(row[-1])
        if item["decision"] == "pending" and expires is not None and expires < now:
            item["decision"] = "expired"
        out.append({
            **item,
            "requested_at": _when(item["requested_at"]), "decided_at": _when(item["decided_at"]),
            "estimate_usd": None if item["estimate_usd"] is None else
            str(Decimal(str(item["estimate_usd"])).quantize(Decimal("0.000001"))),
            "messages": None if item["messages"] is None else int(item["messages"]),
            **{k: None if item[k] is None else mask_text(str(item[k])) for k in ("requested_by", "approver",
                                                                                 "comment")},
        })
    return out


def final_approval(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The answer that let the campaign send (the last approval), else its last decided answer, else None."""
    approved = [r for r in rows if r["decision"] == "approved"]
    decided = [r for r in rows if r["decision"] != "pending"]
    return (approved or decided or [None])[-1]


def write_approvals(files: Any, rows: list[dict[str, Any]]) -> Any:
    """approvals.csv beside the report's files and the approvals appended to report.md (the HTML page renders them
    from the page's `approvals`); the files unchanged when the campaign asked for no approval."""
    if not rows:
        return files
    path = files.csv.parent / "approvals.csv"
    write_csv(pl.DataFrame(rows, schema=SCHEMA), path)
    with files.markdown.open("a", encoding="utf-8") as handle:
        handle.write(markdown(rows))
    return replace(files, approvals_csv=path)


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["", "## Approval before sending", "",
             "| asked | origin | messages | estimate (USD) | decision | by | at | comment |",
             "|---|---|---:|---:|---|---|---|---|"]
    for r in rows:
        cells = [r["requested_at"], r["origin"], r["messages"], r["estimate_usd"], r["decision"], r["approver"],
                 r["decided_at"], r["comment"]]
        lines.append("| " + " | ".join("–" if c is None else md_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _when(value: Any) -> str | None:
    at = utc(value)
    return at.isoformat(timespec="seconds") if at is not None else None
