"""The approval in the campaign's report (pipeline/costs/approvals_report.py): approvals.csv beside the cost report,
a table in report.html and a section of report.md say who was asked, who approved, rejected or was refused, when,
with what comment, and the estimate they were shown; names and comments masked; nothing for a campaign that needed
no approval."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import polars as pl

from pipeline.costs import costing as costs
from pipeline.costs.report import write_report
from pipeline.dispatch.approvals import decide, open_request
from pipeline.store import Store
from tests.costs.rows import add_campaign, add_outbox


class _Table(HTMLParser):
    """The cells of the table with id `approvals`, row by row."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.inside = self.cell = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.inside = ("id", "approvals") in attrs
        elif self.inside and tag == "tr":
            self.rows.append([])
        elif self.inside and tag in ("td", "th"):
            self.cell = True
            self.rows[-1].append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self.inside = False
        elif tag in ("td", "th"):
            self.cell = False

    def handle_data(self, data: str) -> None:
        if self.inside and self.cell:
            self.rows[-1][-1] += data


def _campaign(db: Store, campaign_id: str) -> None:
    costs.load_prices(db)
    add_campaign(db, campaign_id)
    for i in range(3):
        add_outbox(db, campaign_id, f"{campaign_id}-m{i}", recipient_key=f"+44770090012{i}", state="queued")


def test_the_report_says_who_approved_when_and_on_which_estimate(db: Store, tmp_path: Path) -> None:
    _campaign(db, "spring")
    open_request(db, "spring", "run-1:1", flow_run_id="run-1", origin="upload", requested_by="alice",
                 estimate_usd=0.2055, timeout_s=3600)
    decide(db, "run-1:1", "refused", approver="alice", comment="alice started this run and may not approve it")
    open_request(db, "spring", "run-1:2", flow_run_id="run-1", origin="upload", requested_by="alice",
                 estimate_usd=0.2055, timeout_s=3600)
    decide(db, "run-1:2", "approved", approver="bob", comment="fine; call me on +447700900999 if it fails")

    files = write_report(db, "spring", tmp_path / "out")

    assert files.approvals_csv == files.csv.parent / "approvals.csv"
    csv = pl.read_csv(files.approvals_csv, infer_schema=False)
    assert csv.columns == ["requested_at", "origin", "requested_by", "messages", "estimate_usd", "decision",
                           "approver", "decided_at", "comment"]
    assert [(r["decision"], r["approver"], r["estimate_usd"], r["messages"], r["origin"])
            for r in csv.iter_rows(named=True)] == [("refused", "alice", "0.205500", "3", "upload"),
                                                    ("approved", "bob", "0.205500", "3", "upload")]
    approved = csv.row(1, named=True)
    assert approved["decided_at"] >= approved["requested_at"] and approved["decided_at"].startswith("20")
    assert "+447700900999" not in files.approvals_csv.read_text() and "+44*******999" in approved["comment"]

    page = _Table()
    page.feed(files.html.read_text())
    header, *rows = page.rows
    assert header == ["Asked", "Origin", "Started by", "Messages", "Estimate (USD)", "Decision", "By", "At",
                      "Comment"]
    assert [(r[5], r[6], r[4]) for r in rows] == [("refused", "alice", "0.205500"), ("approved", "bob", "0.205500")]
    assert rows[1][7] == approved["decided_at"] and "+447700900999" not in files.html.read_text()
    assert "## Approval before sending" in files.markdown.read_text()
    assert "| approved | bob |" in files.markdown.read_text()


def test_a_rejection_and_an_expired_request_are_reported_too(db: Store, tmp_path: Path) -> None:
    _campaign(db, "autumn")
    open_request(db, "autumn", "run-2:1", flow_run_id="run-2", origin="scheduled", requested_by=None,
                 estimate_usd=1.5, timeout_s=3600)
    decide(db, "run-2:1", "rejected", approver="carol", comment="wrong audience")
    open_request(db, "autumn", "run-3:1", flow_run_id="run-3", origin="scheduled", requested_by=None,
                 estimate_usd=1.5, timeout_s=-1)  # asked, never answered, past its time

    files = write_report(db, "autumn", tmp_path / "out")

    rows = pl.read_csv(files.approvals_csv, infer_schema=False).select("decision", "approver", "comment").rows()
    assert rows == [("rejected", "carol", "wrong audience"), ("expired", None, None)]


def test_no_approval_section_when_none_was_asked(db: Store, tmp_path: Path) -> None:
    _campaign(db, "plain")
    files = write_report(db, "plain", tmp_path / "out")
    assert files.approvals_csv is None and not (files.csv.parent / "approvals.csv").exists()
    assert 'id="approvals"' not in files.html.read_text()
