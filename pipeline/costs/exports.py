"""How the report files write text that other programs open, in one place so no writer can forget it.

CSV: through the spreadsheet escape of the preparation's rejects.csv (pipeline/render/prepare.escape_formulas).
A report's text cells hold what others wrote (a provider's error title and code, a campaign id, an approver's
comment); a cell starting with =, +, -, @ is a formula to Excel, LibreOffice and Sheets when the file is opened.

Markdown: report.md is also the artifact the flow hands to Prefect, whose UI renders it; a tag in a provider's
error text must not reach that page as HTML, and a | would split a table row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from pipeline.render.prepare import escape_formulas


def write_csv(frame: pl.DataFrame, path: Path) -> Path:
    """`frame` as CSV at `path`, every text cell spreadsheet-safe."""
    escape_formulas(frame).write_csv(path)
    return path


def md_text(value: Any) -> str:
    """Free text for Markdown: on one line, < and > as entities (shown as written, never parsed as HTML)."""
    return " ".join(str(value).splitlines()).replace("<", "&lt;").replace(">", "&gt;")


def md_cell(value: Any) -> str:
    """Free text for a Markdown table cell: `md_text`, with | (which would end the cell) as /."""
    return md_text(value).replace("|", "/")
