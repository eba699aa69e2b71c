"""`campaign report` and `campaign prices`, through argparse and the handlers, as the CLI runs them."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from pipeline.cli.costs import add_cost_commands
from pipeline.costs import costing as costs
from pipeline.store import Store
from tests.costs.rows import add_campaign, add_outbox, add_receipt


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="campaign")
    add_cost_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    args = build_parser().parse_args(argv)
    code = args.func(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def store_url(db: Store) -> str:  # noqa: F811
    """The store the commands are pointed at with --db: a SQLite path or a PostgreSQL URL."""
    costs.load_prices(db)
    add_campaign(db, "fall", name="Fall sale", template="fall_v1")
    add_outbox(db, "fall", "f1", recipient_key="+447700900123", country="GB", state="sent", sender="s",
               attempts=0, queued_at="2026-10-05 09:00:00+00", sent_at="2026-10-05 10:00:00+00")
    add_receipt(db, "e1", "f1", "delivered", "2026-10-05 10:01:00+00", provider_message_id="w1",
                category="marketing", pricing_type="regular", raw_json=None)
    return str(db.path) if db.path else db.url


def test_campaign_report_formats(store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--db", store_url, "--reports-dir", str(tmp_path / "reports")]
    code, out, _ = run(["report", "--campaign", "fall", "--format", "csv", *common], capsys)
    assert code == 0
    header, row = out.splitlines()
    assert header.startswith("channel,country,market,category,sent,delivered")
    # 0.0635 platform + 0.005 service for the one delivered UK marketing message.
    assert row.startswith("whatsapp,GB,United Kingdom,marketing,1,1,0,0,1.0,") and ",0.068500," in row
    code, out, _ = run(["report", "--campaign", "fall", "--format", "md", *common], capsys)
    assert code == 0 and out.startswith("# Campaign report: Fall sale") and "| whatsapp | GB | marketing |" in out
    code, out, _ = run(["report", "--campaign", "fall", *common], capsys)  # html: the summary and the paths
    assert code == 0 and "Campaign fall" in out and f"report: {tmp_path / 'reports' / 'fall' / 'report.html'}" in out
    assert sorted(p.name for p in (tmp_path / "reports" / "fall").iterdir()) == [
        "cost_report.csv", "cost_report.parquet", "failures.csv", "failures.parquet", "report.html", "report.md"]


def test_period_report(store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["report", "--period", "2026-10", "--format", "csv", "--db", store_url,
                        "--reports-dir", str(tmp_path)], capsys)
    assert code == 0 and out.splitlines()[1].startswith("fall,whatsapp,GB,United Kingdom,marketing,1,1,")
    assert (tmp_path / "period-2026-10" / "report.html").exists()


def test_report_errors(store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--db", store_url, "--reports-dir", str(tmp_path)]
    assert run(["report", "--campaign", "nope", *common], capsys)[::2] == (2, "error: no campaign 'nope'\n")
    code, _, err = run(["report", "--period", "2026-13", *common], capsys)
    assert code == 2 and "not a month" in err
    with pytest.raises(SystemExit):  # one of --campaign / --period, not both
        build_parser().parse_args(["report", "--campaign", "fall", "--period", "2026-10"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["report", "--campaign", "fall", "--format", "pdf"])


def test_prices_import_and_list(store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    card = tmp_path / "sms-card.csv"
    card.write_text("market,category,platform_fee_usd\nGB,segment,0.035\nDefault,segment,0.045\n")
    code, out, _ = run(["prices", "import", str(card), "--channel", "sms", "--effective-from", "2026-12-01",
                        "--db", store_url], capsys)
    assert (code, out) == (0, "imported 2 rates rows for sms from 2026-12-01 (sms-card.csv); messages priced on or "
                              "after that day use it\n")
    code, out, _ = run(["prices", "list", "--db", store_url], capsys)
    assert code == 0 and "sms        card         2026-12-01         2  import:sms-card.csv" in out
    assert "whatsapp   tiers        2026-10-01         6" in out

    card.write_text("market,category,platform_fee_usd\nGB,segment,-1\n")
    code, _, err = run(["prices", "import", str(card), "--channel", "sms", "--effective-from", "2026-12-01",
                        "--db", store_url], capsys)
    assert code == 2 and "must be >= 0" in err
    code, _, err = run(["prices", "import", str(tmp_path / "missing.csv"), "--db", store_url], capsys)
    assert code == 2 and "missing.csv" in err
