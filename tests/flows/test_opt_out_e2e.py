"""Opt-out end to end through real Prefect flow runs: a campaign runs over the WhatsApp sandbox; one recipient
replies STOP and another taps the template's opt-out quick reply (STOP_PROMOS), both answering the message they
got, posted signed to the real webhook receiver; `campaign receipts` ingests them; the next campaign's run skips
exactly those two, each with a reject saying why, and sends to everyone else again."""

from __future__ import annotations

import hashlib
import hmac
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from pipeline import store
from pipeline.receipts.spool import closed_files
from tests.helpers.receipts import body
from tests.helpers.waiting import wait_for
from tests.helpers.whatsapp import campaign_services

ROOT = Path(__file__).resolve().parents[2]
CAMPAIGN = str(Path(sys.executable).parent / "campaign")
ROWS = 8


def _spec(tmp_path: Path, name: str) -> Path:
    audience = tmp_path / "audience.csv"
    if not audience.exists():
        lines = (ROOT / "audiences/sample.csv").read_text().splitlines()
        audience.write_text("\n".join(lines[: ROWS + 1]) + "\n")
    data = yaml.safe_load((ROOT / "campaigns/welcome.yaml").read_text())
    # The second campaign goes to the same people the same day: the team's cap of one a day would hide the opt-outs.
    data.update(name=name, audience=str(audience), receipts_wait_s=30, frequency_cap={"max": 5, "per": "24h"})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _post(receiver: str, message: dict) -> None:
    payload = body(messages=[message])
    signature = "sha256=" + hmac.new(b"test-app-secret", payload, hashlib.sha256).hexdigest()
    answer = httpx.post(f"{receiver}/webhooks/whatsapp", content=payload,
                        headers={"X-Hub-Signature-256": signature, "Content-Type": "application/json"})
    assert answer.status_code == 200, answer.text


def test_a_stop_reply_and_an_opt_out_tap_keep_the_next_campaign_from_them(tmp_path: Path, prefect_harness) -> None:
    from flows.campaign import campaign_flow

    spool, db = tmp_path / "spool", str(tmp_path / "campaigns.sqlite")
    with campaign_services(spool, seed=11) as (receiver, sandbox):
        def run(name: str) -> dict:
            return campaign_flow(str(_spec(tmp_path, name)), database=db, spool_dir=str(spool),
                                 reports_dir=str(tmp_path / "reports"), provider_base_url=sandbox)

        first = run("welcome-a")
        with store.connect(db) as shared:
            sent = shared.rows("SELECT recipient_key, provider_message_id FROM outbox "
                               "WHERE campaign_id = 'welcome-a' AND state = 'sent' ORDER BY seq")
        assert first["sent"] == len(sent) >= 4
        (stopper, stop_wamid), (tapper, tap_wamid) = sent[0], sent[1]
        now = str(int(time.time()))
        _post(receiver, {"from": stopper.lstrip("+"), "id": "wamid.in-stop", "timestamp": now, "type": "text",
                         "text": {"body": "Stop"}, "context": {"from": "15550001111", "id": stop_wamid}})
        _post(receiver, {"from": tapper.lstrip("+"), "id": "wamid.in-tap", "timestamp": now, "type": "button",
                         "button": {"payload": "STOP_PROMOS", "text": "Stop promotions"},
                         "context": {"from": "15550001111", "id": tap_wamid}})
        # The receiver closes its spool file within a second; `campaign receipts` takes closed files only.
        wait_for(lambda: sum(p.read_bytes().count(b"wamid.in-") for p in closed_files(spool)) == 2,
                 timeout_s=30, what="both inbound messages in closed spool files")
        done = subprocess.run([CAMPAIGN, "receipts", "--db", db, "--spool-dir", str(spool)],
                              capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert done.returncode == 0, done.stderr
        with store.connect(db) as shared:
            assert sorted(shared.rows("SELECT address, reason FROM suppressions WHERE channel = 'whatsapp'")) \
                == sorted([(stopper, "stop_reply"), (tapper, "opt_out_button")])
            assert sorted(shared.rows("SELECT kind, message_id IS NOT NULL, campaign_id FROM replies")) == [
                ("reply", True, "welcome-a"), ("tap", True, "welcome-a")]

        second = run("welcome-b")
    with store.connect(db) as shared:
        again = {r for (r,) in shared.rows("SELECT recipient_key FROM outbox WHERE campaign_id = 'welcome-b'")}
        rejects = shared.rows("SELECT row_number, reason, detail FROM rejects WHERE campaign_id = 'welcome-b' "
                              "AND reason = 'suppressed' ORDER BY row_number")
        row_of = dict(shared.rows("SELECT recipient_key, row_number FROM recipients WHERE campaign_id = 'welcome-a'"))
        first_rows = {r for (r,) in shared.rows("SELECT recipient_key FROM outbox WHERE campaign_id = 'welcome-a'")}
    # Everyone the first campaign reached but the two who opted out, and only those two skipped as opted out.
    assert again == first_rows - {stopper, tapper}
    assert second["accepted"] == len(again) and len(rejects) == 2
    # Each reject says how its recipient opted out.
    listed = "on the whatsapp suppression list (opted out earlier: {})"
    assert rejects == [(row_of[stopper], "suppressed", listed.format("replied STOP")),
                       (row_of[tapper], "suppressed", listed.format("tapped an opt-out button"))]
