"""`campaign status` says whether a run holds the campaign now (its lease, wherever it runs) and refuses a campaign
the store does not know, rather than showing an empty one."""

from __future__ import annotations

import pytest

from pipeline.cli import main
from pipeline.dispatch.locks import campaign_lock
from pipeline.store import Store
from tests.costs.rows import add_campaign


def test_status_says_who_runs_the_campaign_and_refuses_an_unknown_one(
        db: Store, capsys: pytest.CaptureFixture[str]) -> None:
    url = str(db.path) if db.path else db.url
    assert main(["status", "nosuch", "--db", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no campaign nosuch in store ") and err.count("\n") == 1

    add_campaign(db, "fall")
    with campaign_lock(db, "fall", flow_run_id="run-1", flow_run_name="brave-fox"):
        assert main(["status", "fall", "--db", url]) == 0
        assert "running: flow run 'brave-fox' (run-1), pid " in capsys.readouterr().out
    assert main(["status", "fall", "--db", url]) == 0
    assert "not running now" in capsys.readouterr().out
