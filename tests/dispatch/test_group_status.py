"""A campaign dispatched in groups shows live progress in `campaign status`: each group records its figures in the
store and the campaign's are their sum (pipeline/dispatch/group_status.py). On PostgreSQL, the fleet's store, with
groups reporting at the same moment from many connections."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from pipeline import store
from pipeline.cli import main
from pipeline.dispatch.group_status import record_group_status, start_groups
from pipeline.dispatch.operations import campaign_status, record_status
from tests.helpers import stores


@pytest.fixture
def pg_url(tmp_path: Path, request: pytest.FixtureRequest) -> str:
    return stores.new_store_url("postgresql", tmp_path, request)


def progress(sent: int, total: int, *, per_s: float, eta_s: float | None, final: bool = False) -> dict:
    return {"sent": sent, "failed": 1, "deferred": 0, "total": total, "throttled": 0, "retries": 0, "per_s": per_s,
            "fraction": (sent + 1) / total, "eta_s": eta_s, "final": final, "stopped_reason": None,
            "lanes_paused": {}}


def test_campaign_status_shows_the_sum_of_the_groups_progress_with_an_eta(pg_url: str, capsys):
    with store.connect(pg_url) as db:
        record_status(db, "c", progress(500, 500, per_s=50, eta_s=None, final=True))  # an earlier run, in-process
        start_groups(db, "c", 2)
        assert campaign_status(db, "c")["last_run"]["sent"] == 0  # the earlier run's figures are gone
        record_group_status(db, "c", 0, progress(40, 100, per_s=20.0, eta_s=3.0))
        record_group_status(db, "c", 1, progress(10, 100, per_s=10.0, eta_s=9.0))
        last = campaign_status(db, "c")["last_run"]
    assert (last["sent"], last["failed"], last["total"], last["per_s"]) == (50, 2, 200, 30.0)
    assert last["eta_s"] == 9.0 and last["final"] is False  # the slowest group decides
    assert set(last["groups"]) == {"0", "1"} and last["group_count"] == 2
    assert main(["status", "c", "--db", pg_url]) == 0
    out = capsys.readouterr().out
    assert "last dispatch: 50 sent, 2 failed of 200 at 30.0/s, ETA 9 s" in out

    with store.connect(pg_url) as db:  # one group done: the other's ETA; both done: final, no ETA
        record_group_status(db, "c", 0, progress(99, 100, per_s=25.0, eta_s=None, final=True))
        assert campaign_status(db, "c")["last_run"]["eta_s"] == 9.0
        record_group_status(db, "c", 1, progress(99, 100, per_s=12.0, eta_s=None, final=True))
        last = campaign_status(db, "c")["last_run"]
    assert (last["sent"], last["total"], last["final"], last["eta_s"]) == (198, 200, True, None)


def test_groups_reporting_at_once_lose_none_of_each_others_figures(pg_url: str):
    groups, reports = 6, 40
    with store.connect(pg_url) as db:
        start_groups(db, "c", groups)
        errors: list[BaseException] = []

        def group(number: int) -> None:
            try:
                for i in range(1, reports + 1):
                    record_group_status(db, "c", number, progress(i, reports + 1, per_s=1.0, eta_s=1.0))
            except BaseException as exc:  # noqa: BLE001 - shown by the assertion
                errors.append(exc)

        threads = [threading.Thread(target=group, args=(n,)) for n in range(groups)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not errors, errors
        last = json.loads(db.scalar("SELECT status_json FROM campaign_control WHERE campaign_id = 'c'"))
    # Every group's last report is there: a read-modify-write without the row's lock loses some.
    assert {k: v["sent"] for k, v in last["groups"].items()} == {str(n): reports for n in range(groups)}
    assert last["sent"] == groups * reports and last["total"] == groups * (reports + 1)
