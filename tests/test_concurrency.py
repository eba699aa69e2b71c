"""One store that every process shares: while campaign A dispatches (slowly) against the sandbox, the other
commands an operator runs all work at the same time against the same store — receipts three times, A's
partial report, A's status, campaign B on another channel to completion, an upload-page dry run, a price
import. A and B complete, and the sandboxes count every message exactly once. On SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from pipeline.receipts.receiver import create_receiver_app, secrets_from_env
from pipeline.receipts.routes import add_provider_routes
from pipeline.sandbox.registry import DEMO_ENV, start_sandbox
from pipeline.servers import serve_in_thread
from pipeline.spec import load_spec
from pipeline.upload.routes import UploadConfig, add_upload_routes
from tests.helpers.prefect import PrefectServer

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "concurrency-test-token-0123456789"
A_ROWS, B_ROWS = 2000, 150  # A sends for 50 s: longer than every other command takes, also on a busy machine


def _audience(path: Path, rows: int) -> Path:
    lines = (ROOT / "audiences/sample.csv").read_text().splitlines()
    path.write_text("\n".join(lines[: rows + 1]) + "\n")
    return path


def _spec(tmp: Path, source: str, name: str, rows: int, rate: float) -> Path:
    data = yaml.safe_load((ROOT / "campaigns" / source).read_text())
    data.update(name=name, audience=str(_audience(tmp / f"{name}.csv", rows)))
    data["rate_limit"] = {"max_per_second": rate, "concurrency": 4}
    data["receipts_wait_s"] = 20
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _campaign(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def _finish(proc: subprocess.Popen[str], timeout_s: float = 300) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"timed out: {proc.args}\n{out[-3000:]}") from None
    assert proc.returncode == 0, f"{proc.args} exited {proc.returncode}:\n{out[-3000:]}"
    return out


def test_everything_an_operator_runs_works_while_a_campaign_sends(
    tmp_path: Path, db_url: str, prefect_harness: PrefectServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in DEMO_ENV.items():
        monkeypatch.setenv(name, value)
    # The `campaign run` processes report to the session's Prefect server (each would otherwise start its own).
    env = {**os.environ, "PREFECT_API_URL": prefect_harness.api, "CAMPAIGN_DATABASE_URL": db_url}
    spool, reports = tmp_path / "spool", tmp_path / "reports"
    a_spec = _spec(tmp_path, "welcome.yaml", "concurrent-a", A_ROWS, rate=40)
    b_spec = _spec(tmp_path, "sms.yaml", "concurrent-b", B_ROWS, rate=50)
    specs = tmp_path / "campaigns"
    specs.mkdir()
    shutil.copy(a_spec, specs / "welcome.yaml")
    receiver = create_receiver_app(spool, secrets_from_env(), rotate_after_s=0.5)
    add_provider_routes(receiver)
    add_upload_routes(receiver, UploadConfig(token=TOKEN, specs_dir=specs, audiences_dir=tmp_path / "audiences",
                                             staging_dir=tmp_path / "uploads"))
    common = ["--spool-dir", str(spool), "--reports-dir", str(reports)]
    with contextlib.ExitStack() as stack:
        receiver_url = stack.enter_context(serve_in_thread(receiver))
        whatsapp_url, _ = start_sandbox(load_spec(a_spec), receiver_url, stack)
        sms_url, _ = start_sandbox(load_spec(b_spec), receiver_url, stack)
        a = _campaign(env, "run", str(a_spec), "--provider-base-url", whatsapp_url, *common)
        stack.callback(lambda: a.poll() is None and a.kill())
        _wait_until_sending(db_url, "concurrent-a", a)

        added = 0
        for _ in range(3):
            said = _finish(_campaign(env, "receipts", *common))
            added += int(re.search(r"spool files: (\d+) events", said).group(1))  # type: ignore[union-attr]
        assert added > 0, "no receipt of A was ingested while it sent"
        _finish(_campaign(env, "report", "--campaign", "concurrent-a", "--reports-dir", str(reports)))
        status = _finish(_campaign(env, "status", "concurrent-a"))
        assert "campaign concurrent-a" in status and ("sending" in status or "sent" in status)
        b = _campaign(env, "run", str(b_spec), "--provider-base-url", sms_url, *common)
        dry_run = httpx.post(f"{receiver_url}/upload",
                             data={"token": TOKEN, "spec": "welcome.yaml", "uploaded_by": "ops"},
                             files={"file": ("spring.csv", _audience(tmp_path / "up.csv", 50).read_bytes())},
                             follow_redirects=True, timeout=120)
        assert dry_run.status_code == 200 and "estimate" in dry_run.text.lower()
        _finish(_campaign(env, "prices", "import", str(ROOT / "pipeline/data/whatsapp-rates-2026-10-usd.csv")))
        assert a.poll() is None, "campaign A should still be sending: the test proves nothing otherwise"
        _finish(b)
        _finish(a)
        stats_a = httpx.get(f"{whatsapp_url}/_sandbox/stats", timeout=10).json()
        stats_b = httpx.get(f"{sms_url}/_sandbox/stats", timeout=10).json()

    from pipeline import store

    with store.connect(db_url) as db:
        states = {c: dict(db.rows("SELECT state, count(*) FROM outbox WHERE campaign_id = :c GROUP BY state", c=c))
                  for c in ("concurrent-a", "concurrent-b")}
    sent_a, sent_b = states["concurrent-a"].get("sent", 0), states["concurrent-b"].get("sent", 0)
    assert set(states["concurrent-a"]) <= {"sent", "failed"} and set(states["concurrent-b"]) <= {"sent", "failed"}
    assert stats_a["accepted"] == sent_a == stats_a["unique_callback_data"] and stats_a["duplicate_callback_data"] == 0
    assert sent_b > 0 and stats_b["accepted"] == sent_b and stats_b["duplicate_callback_data"] == 0


def _wait_until_sending(db_url: str, campaign_id: str, proc: subprocess.Popen[str]) -> None:
    from pipeline import store

    deadline = time.monotonic() + 180
    with store.connect(db_url) as db:
        while (db.scalar("SELECT count(*) FROM outbox WHERE campaign_id = :c AND state = 'sent'", c=campaign_id)
               or 0) < 20:
            if proc.poll() is not None:
                out = proc.stdout.read() if proc.stdout else ""
                raise AssertionError(f"campaign A ended before sending: {out[-3000:]}")
            assert time.monotonic() < deadline, "campaign A never started sending"
            time.sleep(0.2)
