"""`campaign run` when the operator has something to fix: one `error:` line and exit code 2, no traceback from us or
from Prefect (pipeline/cli/quiet.py), for a missing audience (refused before Prefect starts), a credential not set, a
budget the estimate passes and the campaign already running; bugs keep their tracebacks."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline import store
from pipeline.audience.header import AudienceError
from pipeline.cli import main
from pipeline.dispatch.budget import OverBudget
from pipeline.dispatch.locks import CampaignLocked, campaign_lock
from pipeline.spec import SpecError

ROOT = Path(__file__).resolve().parents[2]
CAMPAIGN = str(Path(sys.executable).parent / "campaign")
RUN_S = 120


def _spec(tmp_path: Path, **changes: object) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    audience = tmp_path / "audience.csv"
    audience.write_text("\n".join((ROOT / "audiences/sample.csv").read_text().splitlines()[:21]) + "\n")
    data = yaml.safe_load((ROOT / "campaigns/welcome.yaml").read_text())
    data.update({"audience": str(audience), "receipts_wait_s": 0, **changes})
    path = tmp_path / "welcome.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _logged(error: Exception) -> logging.LogRecord:
    """The record Prefect's task-run logger would log for `error`, through the logger's filters only (handed to its
    handlers, Prefect's API handler warns outside a flow run, and the suite turns warnings into errors)."""
    run_logger = logging.getLogger("prefect.task_runs")
    try:
        raise error
    except Exception:
        record = run_logger.makeRecord(run_logger.name, logging.ERROR, __file__, 0,
                                       "Task run failed with exception: %r", (error,), sys.exc_info())
    run_logger.filter(record)
    return record


@pytest.mark.parametrize("error", [
    SpecError("credentials.access_token: environment variable WHATSAPP_ACCESS_TOKEN is not set"),
    OverBudget("campaign x: the estimate USD 2.00 is over the budget USD 1.00; nothing was sent"),
    AudienceError("/tmp/nope.csv: cannot read the audience file: No such file or directory"),
    CampaignLocked("x", None),
    store.StoreError("store sqlite:///x: gone"),
], ids=lambda e: type(e).__name__)
def test_an_operators_error_loses_its_traceback_while_the_flow_runs(error: Exception) -> None:
    from pipeline.cli.quiet import operator_errors_without_traceback

    with operator_errors_without_traceback():
        quiet, bug = _logged(error), _logged(KeyError("a bug"))
    assert quiet.exc_info is None and quiet.exc_text is None and str(error) in quiet.getMessage()
    assert bug.exc_info is not None  # a bug keeps its traceback
    assert _logged(error).exc_info is not None  # the filter is gone with the flow run


@pytest.mark.parametrize("audience", ["missing.csv", "a-folder"])
def test_run_refuses_an_audience_it_cannot_read_before_prefect_starts(tmp_path, capsys, monkeypatch, audience):
    import pipeline.cli.run as run

    (tmp_path / "a-folder").mkdir()
    monkeypatch.setattr(run, "_prefect_env", lambda: pytest.fail("Prefect was started"))
    spec = _spec(tmp_path, audience=str(tmp_path / audience))
    assert main(["run", str(spec), "--db", str(tmp_path / "db.sqlite")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {tmp_path / audience}: "), err


def _campaign_run(tmp_path: Path, spec: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CAMPAIGN, "run", str(spec), "--db", str(tmp_path / "db.sqlite"), "--spool-dir", str(tmp_path / "spool"),
         "--reports-dir", str(tmp_path / "reports"), "--provider-base-url", "http://127.0.0.1:9"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=RUN_S)


def _error_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    # The CLI's own line; Prefect's shut-down may log after it (its events worker draining).
    return [line for line in done.stderr.splitlines() if line.startswith("error:")]


@pytest.mark.timeout(300)
def test_errors_inside_the_flow_end_with_one_line_and_no_traceback(tmp_path, prefect_harness):
    env = {**os.environ, "PREFECT_API_URL": prefect_harness.api}  # the session's Prefect, not one per command
    cases = {
        "credential unset": (_spec(tmp_path / "a", credentials={"access_token": "UNSET_TOKEN_FOR_THIS_TEST"}),
                             "error: credentials.access_token: environment variable UNSET_TOKEN_FOR_THIS_TEST"),
        "over budget": (_spec(tmp_path / "b", budget_usd=0.0001), "error: campaign welcome: the estimate USD"),
    }
    for case, (spec, expected) in cases.items():
        done = _campaign_run(spec.parent, spec, env)
        output = done.stdout + done.stderr
        assert done.returncode == 2, (case, output[-3000:])
        assert "Traceback" not in output, (case, output[-5000:])
        errors = _error_lines(done)
        assert len(errors) == 1 and errors[0].startswith(expected), (case, output[-3000:])

    spec = _spec(tmp_path / "c")
    with store.connect(tmp_path / "c" / "db.sqlite") as db, campaign_lock(db, "welcome", flow_run_name="holder"):
        done = _campaign_run(tmp_path / "c", spec, env)
    output = done.stdout + done.stderr
    assert done.returncode == 2 and "Traceback" not in output, output[-5000:]
    errors = _error_lines(done)
    assert len(errors) == 1 and errors[0].startswith("error: campaign 'welcome' is already running"), output
