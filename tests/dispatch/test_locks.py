"""One run per campaign: the lock refuses a second run with a message naming the running one, frees itself when
its holder dies (kill -9), and the campaign flow takes it before touching the ledger."""

from __future__ import annotations

import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.dispatch.locks import CampaignLocked, campaign_lock, current_holder, lock_path

HOLDER = textwrap.dedent("""
    import sys, time
    from pipeline.dispatch.locks import campaign_lock
    with campaign_lock(sys.argv[1], sys.argv[2], flow_run_id="run-in-another-process", flow_run_name="busy-bee"):
        print("locked", flush=True)
        time.sleep(120)
""")


@pytest.fixture
def other_process(tmp_path: Path):
    """A process holding the lock of campaign 'spring' of tmp_path's ledger, as a running campaign would."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "campaigns.duckdb"), "spring"],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_a_second_holder_is_refused_with_the_first_ones_name(tmp_path: Path):
    db = tmp_path / "campaigns.duckdb"
    with campaign_lock(db, "spring", flow_run_id="1234-abcd", flow_run_name="crimson-fox") as holder:
        with pytest.raises(CampaignLocked) as refused:
            with campaign_lock(db, "spring", flow_run_id="5678"):
                pass
        assert current_holder(db, "spring") == holder
    message = str(refused.value)
    assert "campaign 'spring' is already running" in message
    assert "flow run 'crimson-fox' (1234-abcd)" in message and f"pid {holder.pid}" in message
    assert refused.value.holder == holder
    # Released: nobody holds it, and the next run takes it.
    assert current_holder(db, "spring") is None
    with campaign_lock(db, "spring"):
        pass


def test_campaigns_lock_independently(tmp_path: Path):
    db = tmp_path / "campaigns.duckdb"
    with campaign_lock(db, "spring"), campaign_lock(db, "autumn"):
        assert {current_holder(db, c).campaign_id for c in ("spring", "autumn")} == {"spring", "autumn"}
    assert lock_path(db, "spring").parent == tmp_path / "control"  # beside the pause flag


def test_a_run_in_another_process_is_named(tmp_path: Path, other_process: subprocess.Popen[str]):
    named = rf"flow run 'busy-bee' \(run-in-another-process\), pid {other_process.pid} on "
    with pytest.raises(CampaignLocked, match=named):
        with campaign_lock(tmp_path / "campaigns.duckdb", "spring"):
            pass


def test_a_killed_holder_frees_the_lock(tmp_path: Path, other_process: subprocess.Popen[str]):
    db = tmp_path / "campaigns.duckdb"
    assert current_holder(db, "spring").pid == other_process.pid
    other_process.send_signal(signal.SIGKILL)
    other_process.wait(timeout=10)
    assert current_holder(db, "spring") is None  # the kernel dropped the dead process's lock
    with campaign_lock(db, "spring", flow_run_id="next") as holder:
        assert holder.flow_run_id == "next"


def test_the_refusal_survives_pickling(tmp_path: Path):
    with campaign_lock(tmp_path / "db.duckdb", "spring", flow_run_id="r1"):
        with pytest.raises(CampaignLocked) as refused:
            with campaign_lock(tmp_path / "db.duckdb", "spring"):
                pass
    copy = pickle.loads(pickle.dumps(refused.value))
    assert str(copy) == str(refused.value) and copy.holder == refused.value.holder


def test_the_campaign_flow_refuses_while_another_run_holds_the_campaign(
    tmp_path: Path, other_process: subprocess.Popen[str], prefect_harness
):
    import yaml

    from flows.campaign import campaign_flow

    root = Path(__file__).resolve().parents[2]
    spec = yaml.safe_load((root / "campaigns/welcome.yaml").read_text())
    spec.update(name="spring", audience=str(root / "audiences/sample.csv"))
    (tmp_path / "spring.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(CampaignLocked, match="campaign 'spring' is already running: flow run 'busy-bee'"):
        campaign_flow(str(tmp_path / "spring.yaml"), db_path=str(tmp_path / "campaigns.duckdb"),
                      spool_dir=str(tmp_path / "spool"), reports_dir=str(tmp_path / "reports"),
                      provider_base_url="http://127.0.0.1:9")
    # Refused before it touched anything: no ledger, no report folder.
    assert not (tmp_path / "campaigns.duckdb").exists() and not (tmp_path / "reports").exists()
