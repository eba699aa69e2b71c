"""The preparation chain (load → validate → suppress → dedupe → render) and its output files:
accepted.parquet, rejects.parquet and a spreadsheet-safe rejects.csv."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from pipeline.audience import load_audience
from pipeline.numbers import validate_numbers
from pipeline.policy import BlockedPolicy, blocked_policy
from pipeline.records import REJECTS_SCHEMA
from pipeline.spec import TemplateSpec
from pipeline.templates import TemplateProblem, check_template, render_messages

# Cells starting with these are formulas to Excel/LibreOffice/Sheets (CSV injection).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
REJECTS_COLUMNS = [*REJECTS_SCHEMA, "phone"]


@dataclass(frozen=True)
class Prepared:
    accepted: pl.DataFrame  # row_number, CSV columns, phone_e164, region, number_type[, text, params_json]
    rejects: pl.DataFrame  # row_number, reason, detail, phone (as written in the CSV)
    rows_read: int
    counts: dict[str, int]  # rejects by reason


def escape_formulas(frame: pl.DataFrame) -> pl.DataFrame:
    """Prefixes a ' to every text cell a spreadsheet would evaluate as a formula."""
    formula = "^[" + re.escape("".join(FORMULA_PREFIXES)) + "]"
    return frame.with_columns(
        pl.when(pl.col(name).str.contains(formula)).then(pl.lit("'") + pl.col(name)).otherwise(pl.col(name)).alias(name)
        for name, dtype in frame.schema.items()
        if dtype == pl.String
    )


def prepare_audience(
    path: Path | str,
    *,
    channel: str,
    category: str,
    template: TemplateSpec | None = None,
    variables: dict[str, str] | None = None,
    policy: BlockedPolicy | None = None,
    suppressed: Iterable[str] = frozenset(),
    out_dir: Path | str | None = None,
    default_country: str | None = None,
) -> Prepared:
    """Runs every preparation stage over one audience file; raises AudienceError for an unusable
    file and TemplateProblem for a template that cannot fit this audience."""
    loaded = load_audience(path)
    variables = dict(variables or {})
    if template is not None:
        problems = check_template(template, variables, loaded.frame.columns)
        if problems:
            raise TemplateProblem(f"{path}: " + "; ".join(problems))
    accepted, number_rejects = validate_numbers(
        loaded.frame,
        channel=channel,
        category=category,
        policy=policy if policy is not None else blocked_policy(channel),
        suppressed=suppressed,
        default_country=default_country,
    )
    parts = [loaded.rejects, number_rejects]
    if template is not None:
        accepted, render_rejects = render_messages(accepted, template, variables)
        parts.append(render_rejects)

    # Every row read lands in exactly one of accepted / rejects, with the phone as written.
    phones = pl.concat([loaded.frame.select("row_number", "phone"), _phone_column(loaded.rejected_rows)])
    rejects = pl.concat(parts).join(phones, on="row_number", how="left").sort("row_number").select(REJECTS_COLUMNS)
    counts = dict(sorted(rejects.group_by("reason").len().iter_rows()))
    if accepted.height + rejects.height != loaded.rows_read:
        raise RuntimeError(  # a stage dropped or duplicated rows: never send on that
            f"{path}: {loaded.rows_read} rows read but {accepted.height} accepted + {rejects.height} rejected"
        )
    prepared = Prepared(accepted=accepted, rejects=rejects, rows_read=loaded.rows_read, counts=counts)
    if out_dir is not None:
        write_outputs(prepared, Path(out_dir))
    return prepared


def _phone_column(rows: pl.DataFrame) -> pl.DataFrame:
    if rows.is_empty() or "phone" not in rows.columns:
        return pl.DataFrame(schema={"row_number": pl.Int64, "phone": pl.String})
    return rows.select(pl.col("row_number").cast(pl.Int64), pl.col("phone").cast(pl.String))


def write_outputs(prepared: Prepared, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "accepted": out_dir / "accepted.parquet",
        "rejects": out_dir / "rejects.parquet",
        "rejects_csv": out_dir / "rejects.csv",
    }
    prepared.accepted.write_parquet(paths["accepted"])
    prepared.rejects.write_parquet(paths["rejects"])
    escape_formulas(prepared.rejects).write_csv(paths["rejects_csv"])
    return paths
