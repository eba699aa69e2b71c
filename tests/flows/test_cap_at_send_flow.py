"""Two marketing campaigns to the same people, queued before either sends (the second waits for its send window):
the team's cap (1 marketing message per 24 h) holds through the campaign flow, because each run applies it again to
what is still queued as its dispatch starts (pipeline/dispatch/cap_at_send.py). The flow in this process on the
session's Prefect server, the WhatsApp sandbox on loopback, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from pipeline import store
from pipeline.dispatch.operations import campaign_status
from pipeline.sandbox.whatsapp import SandboxConfig, create_app
from pipeline.servers import serve_in_thread
from tests.helpers.prefect import PrefectServer

ROOT = Path(__file__).resolve().parents[2]
A, B, C, D = (f"+44740012370{i}" for i in range(4))


def _spec(tmp: Path, name: str, numbers: list[str], opens: datetime | None = None) -> Path:
    """A spec of the demo template; with `opens`, a send window of one slot opening then."""
    audience = tmp / f"{name}.csv"
    audience.write_text("phone,first_name,city,coupon,opt_in\n" + "".join(f"{n},Ann,Leeds,W-1,yes\n" for n in numbers))
    data = yaml.safe_load((ROOT / "campaigns/welcome.yaml").read_text())
    data.update(name=name, audience=str(audience), receipts_wait_s=0)
    if opens is not None:
        data["send_window"] = {"slots": [{"start": opens.isoformat(), "end": (opens + timedelta(hours=1)).isoformat()}]}
    spec = tmp / f"{name}.yaml"
    spec.write_text(yaml.safe_dump(data))
    return spec


def test_a_campaign_queued_before_another_sent_withholds_the_capped_at_its_dispatch_and_its_resume(
    prefect_harness: PrefectServer, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.campaign import campaign_flow
    from pipeline.cli.parser import main

    app = create_app(SandboxConfig(access_token="test-token", app_secret="test-app-secret",
                                   templates={"welcome_offer": "marketing"}))
    sandbox = app.state.sandbox
    now = datetime.now(UTC)
    with serve_in_thread(app) as url:
        common = {"database": db_url, "spool_dir": str(tmp_path / "spool"), "reports_dir": str(tmp_path / "reports"),
                  "provider_base_url": url}
        # summer is queued first and waits for its window; spring, to three of the same people, sends meanwhile.
        summer = _spec(tmp_path, "summer", [A, B, C, D], opens=now + timedelta(hours=1))
        first = campaign_flow(str(summer), **common)
        assert sandbox.accepted == 0 and first["queued"] == 4
        campaign_flow(str(_spec(tmp_path, "spring", [A, B, C])), **common)
        assert sandbox.accepted == 3

        # summer's window opens: its run (a continuation, or `campaign resume`) sends only to D.
        _spec(tmp_path, "summer", [A, B, C, D], opens=now - timedelta(minutes=1))
        args = ["--db", db_url, "--spool-dir", common["spool_dir"], "--reports-dir", common["reports_dir"],
                "--provider-base-url", url, "--started-by", "carol"]
        capsys.readouterr()
        assert main(["resume", str(summer), *args]) == 0
        # Each person had one marketing message: A, B, C spring's, D summer's.
        assert Counter("+" + to for _, to, *_ in sandbox.messages) == {A: 1, B: 1, C: 1, D: 1}
        shown = capsys.readouterr().out
        assert "withheld, not sent" in shown and "frequency_capped" in shown
        assert main(["resume", str(summer), *args]) == 0  # again: nothing more
        assert main(["status", "summer", "--db", db_url]) == 0
        assert "withheld, frequency_capped: 3 (not sent)" in capsys.readouterr().out

    assert Counter("+" + to for _, to, *_ in sandbox.messages) == {A: 1, B: 1, C: 1, D: 1}  # after both resumes
    with store.connect(db_url) as db:
        status = campaign_status(db, "summer")
        capped = db.rows("SELECT reason FROM rejects WHERE campaign_id = 'summer'")
    assert status["states"] == {"sent": 1, "withheld": 3} and status["withheld"] == {"frequency_capped": 3}
    assert capped == [("frequency_capped",)] * 3
