"""One run per campaign, wherever it runs: the lease refuses a second run with a message naming the running one,
frees itself when its holder dies (kill -9) or stops renewing, and the campaign flow takes it before touching the
store. On SQLite and on PostgreSQL."""

from __future__ import annotations

import pickle
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipeline import store
from pipeline.dispatch.locks import CampaignLocked, campaign_lock, current_holder

HOLDER = textwrap.dedent("""
    import sys, time
    from pipeline import store
    from pipeline.dispatch.locks import campaign_lock
    with campaign_lock(store.connect(sys.argv[1]), sys.argv[2], flow_run_id="run-in-another-process",
                       flow_run_name="busy-bee"):
        print("locked", flush=True)
        time.sleep(120)
""")


@pytest.fixture
def other_process(db_url: str):
    """A process holding the lease of campaign 'spring', as a running campaign would."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, db_url, "spring"], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_a_second_holder_is_refused_with_the_first_ones_name(db: store.Store):
    with campaign_lock(db, "spring", flow_run_id="1234-abcd", flow_run_name="crimson-fox") as lease:
        with pytest.raises(CampaignLocked) as refused:
            with campaign_lock(db, "spring", flow_run_id="5678"):
                pass
        assert current_holder(db, "spring") == lease.holder
    message = str(refused.value)
    assert "campaign 'spring' is already running" in message
    assert "flow run 'crimson-fox' (1234-abcd)" in message and f"pid {lease.holder.pid}" in message
    assert refused.value.holder == lease.holder
    # Released: nobody holds it, and the next run takes it.
    assert current_holder(db, "spring") is None
    with campaign_lock(db, "spring"):
        pass


def test_campaigns_lock_independently(db: store.Store):
    with campaign_lock(db, "spring"), campaign_lock(db, "autumn"):
        assert {current_holder(db, c).campaign_id for c in ("spring", "autumn")} == {"spring", "autumn"}


def test_a_run_in_another_process_is_named(db: store.Store, other_process: subprocess.Popen[str]):
    named = rf"flow run 'busy-bee' \(run-in-another-process\), pid {other_process.pid} on "
    with pytest.raises(CampaignLocked, match=named):
        with campaign_lock(db, "spring"):
            pass


def test_a_killed_holder_on_this_host_frees_the_lease_at_once(db: store.Store, other_process: subprocess.Popen[str]):
    assert current_holder(db, "spring").pid == other_process.pid
    other_process.send_signal(signal.SIGKILL)
    other_process.wait(timeout=10)
    assert current_holder(db, "spring") is None  # its process is gone: the lease names nobody alive
    with campaign_lock(db, "spring", flow_run_id="next") as lease:
        assert lease.holder.flow_run_id == "next"


def test_a_holder_elsewhere_that_stops_renewing_loses_the_lease_when_it_expires(db: store.Store):
    # As a machine that died would leave it: a live-looking holder on another host, its lease running out.
    now = datetime.now(UTC)
    db.execute("INSERT INTO leases (name, holder, pid, host, since, expires_at, cap_checked_at) "
               "VALUES ('campaign:spring', 'gone', 4242, 'worker-b', :since, :expires, :since)",
               since=now - timedelta(minutes=5), expires=now + timedelta(seconds=1))
    with pytest.raises(CampaignLocked, match="pid 4242 on worker-b"):
        with campaign_lock(db, "spring"):
            pass
    deadline = time.monotonic() + 10
    while current_holder(db, "spring") is not None:
        assert time.monotonic() < deadline, "the expired lease still names its holder"
        time.sleep(0.1)
    with campaign_lock(db, "spring", flow_run_id="takeover") as lease:
        assert current_holder(db, "spring") == lease.holder
        # The dead run had checked the frequency cap; the new one has not yet (pipeline/dispatch/cap_at_send.py).
        assert db.scalar("SELECT cap_checked_at FROM leases WHERE name = 'campaign:spring'") is None


def test_a_live_holder_keeps_its_lease_by_renewing_it(db: store.Store):
    with campaign_lock(db, "spring", ttl_s=0.6) as lease:
        first = db.scalar("SELECT expires_at FROM leases WHERE name = 'campaign:spring'")
        deadline = time.monotonic() + 10
        while db.scalar("SELECT expires_at FROM leases WHERE name = 'campaign:spring'") == first:
            assert time.monotonic() < deadline, "the lease was never renewed"
            time.sleep(0.05)
        with pytest.raises(CampaignLocked):
            with campaign_lock(db, "spring"):
                pass
        assert not lease.lost.is_set()


def test_the_refusal_survives_pickling(db: store.Store):
    with campaign_lock(db, "spring", flow_run_id="r1"):
        with pytest.raises(CampaignLocked) as refused:
            with campaign_lock(db, "spring"):
                pass
    copy = pickle.loads(pickle.dumps(refused.value))
    assert str(copy) == str(refused.value) and copy.holder == refused.value.holder


def test_the_campaign_flow_refuses_while_another_run_holds_the_campaign(
    tmp_path: Path, db_url: str, other_process: subprocess.Popen[str], prefect_harness
):
    import yaml

    from flows.campaign import campaign_flow

    root = Path(__file__).resolve().parents[2]
    spec = yaml.safe_load((root / "campaigns/welcome.yaml").read_text())
    spec.update(name="spring", audience=str(root / "audiences/sample.csv"))
    (tmp_path / "spring.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(CampaignLocked, match="campaign 'spring' is already running: flow run 'busy-bee'"):
        campaign_flow(str(tmp_path / "spring.yaml"), database=db_url, spool_dir=str(tmp_path / "spool"),
                      reports_dir=str(tmp_path / "reports"), provider_base_url="http://127.0.0.1:9")
    # Refused before it touched anything: no campaign in the store, no report folder.
    with store.connect(db_url) as db:
        assert db.scalar("SELECT count(*) FROM campaigns") == 0
    assert not (tmp_path / "reports").exists()


def test_on_postgresql_a_machine_whose_clock_runs_ahead_does_not_take_a_live_lease(
        tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fleet's holders run on several machines: expiry is by the store's clock, so one whose clock is an hour
    ahead still sees the live leases (the campaign's and a sender's) as held."""
    from pipeline.dispatch import locks
    from tests.helpers import stores

    class Ahead(datetime):
        @classmethod
        def now(cls, tz=None):  # noqa: ANN001, ANN206
            return datetime.now(tz) + timedelta(hours=1)

    with store.connect(stores.new_store_url("postgresql", tmp_path, request)) as db:
        first = locks.SenderLeases(db, "c", ttl_s=30)
        assert first.take(["s1"]) == ["s1"]
        with campaign_lock(db, "c", flow_run_id="run-1", ttl_s=30):
            monkeypatch.setattr(locks, "datetime", Ahead)
            with pytest.raises(CampaignLocked, match="run-1"), campaign_lock(db, "c", flow_run_id="run-2", ttl_s=30):
                pass
            assert locks.SenderLeases(db, "c", ttl_s=30).take(["s1"]) == []
            assert current_holder(db, "c") is not None and set(locks.sender_holders(db, "c")) == {"s1"}


@pytest.mark.parametrize("command", ["resume", "retry-failed", "resend-unknown"])
def test_a_refused_resume_or_requeue_changes_nothing(
    command: str, tmp_path: Path, db: store.Store, db_url: str, prefect_harness, capsys: pytest.CaptureFixture[str]
):
    """The pause flag is cleared and failed or unknown messages queued again by the run that holds the campaign,
    right after it takes the lease: a command refused because another run holds it (once it cleared the flag first,
    and the running dispatch went on sending) changes nothing."""
    import yaml

    from pipeline.cli import main
    from pipeline.dispatch import operations
    from tests.helpers.whatsapp import queue

    root = Path(__file__).resolve().parents[2]
    spec = yaml.safe_load((root / "campaigns/welcome.yaml").read_text())
    spec.update(name="t", audience=str(root / "audiences/sample.csv"))
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(spec))
    queue(db, 4)
    db.execute("UPDATE outbox SET state = 'unknown' WHERE seq = 0")
    db.execute("UPDATE outbox SET state = 'failed', retryable = :yes WHERE seq = 1", yes=True)
    operations.request_pause(db, "t")
    before = sorted(db.rows("SELECT seq, state FROM outbox"))
    with campaign_lock(db, "t", flow_run_id="run-1", flow_run_name="brave-fox"):  # a running `campaign run t`
        assert main([command, str(tmp_path / "t.yaml"), "--db", db_url, "--spool-dir", str(tmp_path / "spool"),
                     "--reports-dir", str(tmp_path / "reports"), "--provider-base-url", "http://127.0.0.1:9"]) == 2
        assert "campaign 't' is already running: flow run 'brave-fox'" in capsys.readouterr().err
        assert operations.is_paused(db, "t") and sorted(db.rows("SELECT seq, state FROM outbox")) == before


def test_a_bad_lease_setting_is_one_error_line_where_a_lease_is_needed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """CAMPAIGN_LEASE_TTL_S / CAMPAIGN_LEASE_RENEW_S are read when a lease is made: once parsed at import, a bad value
    broke every command importing pipeline/dispatch/locks.py (status, pause...) with a traceback."""
    from pipeline.cli import main
    from pipeline.dispatch import locks
    from pipeline.spec import SpecError

    env = {**__import__("os").environ, "CAMPAIGN_LEASE_TTL_S": "abc", "CAMPAIGN_LEASE_RENEW_S": "-1"}
    imported = subprocess.run([sys.executable, "-c", "import pipeline.dispatch.locks"], env=env, capture_output=True,
                              text=True, timeout=120)
    assert imported.returncode == 0, imported.stderr

    with store.connect(tmp_path / "campaigns.sqlite") as db:
        monkeypatch.setenv("CAMPAIGN_LEASE_TTL_S", "abc")
        assert main(["status", "x", "--db", str(db.path)]) == 2  # status needs no lease: its own answer
        assert capsys.readouterr().err.startswith("error: no campaign x in store ")
        with pytest.raises(SpecError, match=r"^CAMPAIGN_LEASE_TTL_S: 'abc' is not a positive number of seconds$"):
            with campaign_lock(db, "c"):
                pass
        welcome = str(Path(__file__).resolve().parents[2] / "campaigns/welcome.yaml")
        assert main(["resume", welcome, "--db", str(db.path)]) == 2  # before Prefect starts
        assert capsys.readouterr().err == "error: CAMPAIGN_LEASE_TTL_S: 'abc' is not a positive number of seconds\n"
        monkeypatch.setenv("CAMPAIGN_LEASE_TTL_S", "3.0")  # fractional seconds, as the fleet's takeover rounds use
        monkeypatch.setenv("CAMPAIGN_LEASE_RENEW_S", "0.5")
        leases = locks.SenderLeases(db, "c")
        assert (leases.ttl_s, leases.renew_s) == (3.0, 0.5)
        monkeypatch.setenv("CAMPAIGN_LEASE_RENEW_S", "0")
        with pytest.raises(SpecError, match="CAMPAIGN_LEASE_RENEW_S"):
            locks.SenderLeases(db, "c")
