"""The audience drop folder: which files are ready, the campaign id of each upload, the spec it runs with, where
each file ends up with its reason file, and the watcher flow starting real campaigns against the sandbox."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import yaml

from pipeline import store
from pipeline.spec import SpecError
from pipeline.upload import inbox

ROOT = Path(__file__).resolve().parents[2]
AT = datetime(2026, 11, 25, 14, 3, 7, tzinfo=UTC)


def _audience(path: Path, rows: int) -> Path:
    lines = (ROOT / "audiences/sample.csv").read_text().splitlines()
    path.write_text("\n".join(lines[: rows + 1]) + "\n")
    return path


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_campaign_ids_are_the_file_name_and_the_time():
    assert inbox.campaign_id_for("Spring Promo (v2).csv", AT) == "spring-promo-v2-20261125-140307"
    assert inbox.campaign_id_for("___.CSV", AT) == "upload-20261125-140307"
    long = inbox.campaign_id_for("x" * 200 + ".csv", AT)
    assert len(long) <= 64 and long.startswith("x" * 40 + "-")


def test_ready_uploads_wait_for_quiet_files_and_skip_partial_ones(tmp_path: Path):
    folders = inbox.Folders.under(tmp_path)
    folders.create()
    old = _audience(folders.inbox / "old.csv", 3)
    sidecar = folders.inbox / "old.yaml"
    sidecar.write_text("channel: whatsapp\n")
    newer = _audience(folders.inbox / "newer.CSV", 3)
    fresh = _audience(folders.inbox / "fresh.csv", 3)  # still being written, as far as we can tell
    (folders.inbox / "uploading.csv.part").write_text("phone\n")
    (folders.inbox / ".hidden.csv").write_text("phone\n")
    (folders.inbox / "orphan.yaml").write_text("channel: whatsapp\n")
    notes = folders.inbox / "notes.txt"
    notes.write_text("hello")
    for path, age in ((old, 30), (sidecar, 30), (newer, 20), (notes, 10)):
        _age(path, age)
    found = inbox.ready_uploads(folders.inbox, settle_s=5)
    assert [(u.path.name, u.sidecar.name if u.sidecar else None, u.supported) for u in found] == [
        ("old.csv", "old.yaml", True), ("newer.CSV", None, True), ("notes.txt", None, False)]
    assert fresh.name not in {u.path.name for u in found}
    # A sidecar still being written holds its CSV back too.
    sidecar.write_text("channel: whatsapp\nsender: '1'\n")
    assert "old.csv" not in {u.path.name for u in inbox.ready_uploads(folders.inbox, settle_s=5)}


def test_claims_are_exclusive_and_ids_unique(tmp_path: Path):
    folders = inbox.Folders.under(tmp_path)
    folders.create()
    first = inbox.ready_uploads(folders.inbox, settle_s=0)
    assert first == []
    _audience(folders.inbox / "list.csv", 3)
    [upload] = inbox.ready_uploads(folders.inbox, settle_s=0)
    claimed = inbox.claim(upload, folders, at=AT)
    assert claimed is not None and claimed.campaign_id == "list-20261125-140307"
    assert claimed.csv == folders.work / "list-20261125-140307.csv" and claimed.csv.exists()
    assert not upload.path.exists()
    assert inbox.claim(upload, folders, at=AT) is None  # another watcher got there first
    # The same name uploaded again within the same second is still a campaign of its own.
    _audience(folders.inbox / "LIST.csv", 3)
    [again] = inbox.ready_uploads(folders.inbox, settle_s=0)
    second = inbox.claim(again, folders, at=AT)
    assert second is not None and second.campaign_id == "list-20261125-140307-2"


def _claimed(tmp_path: Path, sidecar: str | None = None) -> tuple[inbox.Folders, inbox.Claimed]:
    folders = inbox.Folders.under(tmp_path)
    folders.create()
    _audience(folders.inbox / "spring.csv", 20)
    if sidecar is not None:
        (folders.inbox / "spring.yaml").write_text(sidecar)
    [upload] = inbox.ready_uploads(folders.inbox, settle_s=0)
    claimed = inbox.claim(upload, folders, at=AT)
    assert claimed is not None
    return folders, claimed


def test_the_spec_is_the_sidecar_else_the_default_named_after_the_upload(tmp_path: Path):
    default = ROOT / "campaigns/inbox-default.yaml"
    _, plain = _claimed(tmp_path / "a")
    spec, data = inbox.resolve_spec(plain, default, Path("x.csv"))
    assert spec.name == data["name"] == "spring-20261125-140307" and data["audience"].endswith("x.csv")
    assert spec.template.name == "welcome_offer"

    sidecar = yaml.safe_load(default.read_text())
    sidecar.update(name="ignored", rate_limit={"max_per_second": 5, "concurrency": 1})
    _, own = _claimed(tmp_path / "b", yaml.safe_dump(sidecar))
    spec, _ = inbox.resolve_spec(own, default, Path("x.csv"))
    assert spec.name == "spring-20261125-140307" and spec.rate_limit.max_per_second == 5

    _, broken = _claimed(tmp_path / "c", "channel: carrier-pigeon\n")
    with pytest.raises(SpecError, match=r"spring\.csv spec \(spring\.yaml\).*channel"):
        inbox.resolve_spec(broken, default, Path("x.csv"))


def test_finish_moves_the_upload_and_writes_the_reason(tmp_path: Path):
    folders, claimed = _claimed(tmp_path, "channel: whatsapp\n")
    moved = inbox.finish(claimed, folders, "started", spec_data={"name": claimed.campaign_id},
                         details={"accepted": 3})
    cid = claimed.campaign_id
    assert moved.csv == folders.processed / f"{cid}.csv" and moved.csv.exists()
    assert (folders.processed / f"{cid}.upload.yaml").exists()  # the sidecar as uploaded
    assert yaml.safe_load((folders.processed / f"{cid}.yaml").read_text()) == {"name": cid}
    reason = json.loads((folders.processed / f"{cid}.reason.json").read_text())
    assert reason["outcome"] == "started" and reason["file"] == "spring.csv" and reason["accepted"] == 3
    assert list(folders.work.iterdir()) == []

    # The campaign could not start after all: everything moves to failed/, nothing stays behind.
    inbox.finish(moved, folders, "failed", reason="no deployment")
    assert list(folders.processed.iterdir()) == []
    assert json.loads((folders.failed / f"{cid}.reason.json").read_text())["reason"] == "no deployment"
    assert sorted(p.name for p in folders.failed.iterdir()) == [f"{cid}.csv", f"{cid}.reason.json",
                                                                f"{cid}.upload.yaml"]


# --- the watcher flow ----------------------------------------------------------------------------------------


@pytest.fixture
def sandbox(tmp_path: Path, prefect_harness):
    from tests.helpers.whatsapp import campaign_services

    with campaign_services(tmp_path / "spool", seed=5, delay_s=(0.01, 0.02)) as (_, url):
        yield url


def _sidecar(**changes) -> str:
    data = yaml.safe_load((ROOT / "campaigns/inbox-default.yaml").read_text())
    data.update(receipts_wait_s=10, rate_limit={"max_per_second": 200, "concurrency": 4}, **changes)
    return yaml.safe_dump(data)


def test_the_watcher_starts_a_campaign_per_upload_and_files_each(tmp_path: Path, sandbox: str):
    from flows.watcher import inbox_watcher_flow

    folders = inbox.Folders.under(tmp_path / "audiences")
    folders.create()
    _audience(folders.inbox / "spring.csv", 30)
    # This spec opts out of the approval uploads wait for by default (tests/flows/test_approval_suspend.py).
    (folders.inbox / "spring.yaml").write_text(_sidecar(approval={"required": False}))
    (folders.inbox / "no-phone.csv").write_text("mobile,opt_in\n+447700900123,yes\n")
    (folders.inbox / "notes.txt").write_text("not an audience")
    db = str(tmp_path / "campaigns.sqlite")
    results = inbox_watcher_flow(
        audiences_dir=str(tmp_path / "audiences"), database=db, spool_dir=str(tmp_path / "spool"),
        reports_dir=str(tmp_path / "reports"), provider_base_url=sandbox, settle_s=0,
    )
    by_file = {r["file"]: r for r in results}
    assert {f: r["outcome"] for f, r in by_file.items()} == {
        "spring.csv": "started", "no-phone.csv": "failed", "notes.txt": "failed"}
    assert sorted(p.name for p in folders.inbox.iterdir()) == [inbox.WORK_DIR]  # the inbox is empty

    # The upload became its own campaign and was sent.
    cid = by_file["spring.csv"]["campaign_id"]
    assert cid.startswith("spring-")
    reason = json.loads((folders.processed / f"{cid}.reason.json").read_text())
    assert reason["outcome"] == "started" and reason["rows_read"] == 30 and reason["sent"] > 0
    accepted = httpx.get(f"{sandbox}/_sandbox/stats?messages=0").json()["accepted"]
    with store.connect(db) as shared:
        sent = shared.scalar("SELECT count(*) FROM outbox WHERE campaign_id = :c AND state = 'sent'", c=cid)
    assert sent == accepted == reason["sent"]
    assert (tmp_path / "reports" / cid / "report.html").exists()
    spec = yaml.safe_load((folders.processed / f"{cid}.yaml").read_text())
    assert spec["name"] == cid and spec["audience"] == f"{cid}.csv"  # resumable: `campaign resume` this file

    # The bad ones say why, next to the file.
    bad = json.loads((folders.failed / f"{by_file['no-phone.csv']['campaign_id']}.reason.json").read_text())
    assert "missing required column" in bad["reason"] and "phone" in bad["reason"]
    txt = json.loads((folders.failed / f"{by_file['notes.txt']['campaign_id']}.reason.json").read_text())
    assert txt["reason"] == "not a CSV file: notes.txt"
    assert (folders.failed / f"{by_file['notes.txt']['campaign_id']}.txt").exists()

    # Nothing left to do on the next round.
    again = inbox_watcher_flow(audiences_dir=str(tmp_path / "audiences"), database=db, settle_s=0)
    assert again == []


def test_an_upload_with_no_eligible_recipient_fails_before_sending(tmp_path: Path, prefect_harness):
    from flows.watcher import inbox_watcher_flow

    folders = inbox.Folders.under(tmp_path / "audiences")
    folders.create()
    (folders.inbox / "nobody.csv").write_text(
        "phone,country,first_name,city,coupon,opt_in\n+33 6 12 36 56 37,FR,Hugo,Paris,C-1,no\n")
    [result] = inbox_watcher_flow(audiences_dir=str(tmp_path / "audiences"), database=str(tmp_path / "db.sqlite"),
                                  settle_s=0)
    assert result["outcome"] == "failed" and "no eligible recipient" in result["reason"]
    assert "no_opt_in" in result["reason"] and "36 56 37" not in json.dumps(result)
    assert not (tmp_path / "db.sqlite").exists()


def test_with_a_deployment_each_upload_starts_its_own_deployment_run(tmp_path: Path, prefect_harness):
    from prefect import get_client

    from flows.campaign import campaign_flow
    from flows.watcher import inbox_watcher_flow

    campaign_flow.to_deployment(name="inbox-campaign").apply()
    folders = inbox.Folders.under(tmp_path / "audiences")
    folders.create()
    _audience(folders.inbox / "autumn.csv", 10)
    [result] = inbox_watcher_flow(audiences_dir=str(tmp_path / "audiences"), database=str(tmp_path / "db.sqlite"),
                                  campaign_deployment="campaign/inbox-campaign", settle_s=0)
    assert result["outcome"] == "started"
    cid = result["campaign_id"]
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(result["flow_run_id"])
    # A run of the campaign deployment, named after the upload, with the spec written beside the file.
    assert run.name == cid and run.parameters["campaign_id"] == cid
    assert run.parameters["spec_path"] == str(folders.processed / f"{cid}.yaml")
    assert (folders.processed / f"{cid}.csv").exists()
    reason = json.loads((folders.processed / f"{cid}.reason.json").read_text())
    assert reason["flow_run_id"] == result["flow_run_id"] and reason["deployment"] == "campaign/inbox-campaign"

    # Without that deployment, the upload fails with the reason instead of vanishing.
    _audience(folders.inbox / "winter.csv", 10)
    [missing] = inbox_watcher_flow(audiences_dir=str(tmp_path / "audiences"), database=str(tmp_path / "db.sqlite"),
                                   campaign_deployment="campaign/no-such-deployment", settle_s=0)
    assert missing["outcome"] == "failed" and "no-such-deployment" in missing["reason"]
    assert (folders.failed / f"{missing['campaign_id']}.csv").exists()
    assert not (folders.processed / f"{missing['campaign_id']}.yaml").exists()


def test_an_upload_run_here_as_a_subflow_waits_for_an_approval_by_default(tmp_path: Path, sandbox: str):
    """Without a campaign deployment the upload's campaign runs as the watcher's subflow: paused (a subflow cannot be
    suspended) until someone answers; rejected, the upload is filed as failed with the reason and nothing is sent."""
    from concurrent.futures import ThreadPoolExecutor

    from flows.approval import approve_from_cli
    from pipeline.dispatch.approvals import history, pending_request
    from tests.helpers.waiting import wait_for

    folders = inbox.Folders.under(tmp_path / "audiences")
    folders.create()
    _audience(folders.inbox / "autumn.csv", 10)
    (folders.inbox / "autumn.yaml").write_text(_sidecar())  # no approval settings: the default for uploads
    db = tmp_path / "campaigns.sqlite"

    def waiting() -> dict | None:
        if not db.exists():
            return None
        with store.connect(db) as shared:
            ids = [r[0] for r in shared.rows("SELECT DISTINCT campaign_id FROM campaign_approvals")]
            asked = pending_request(shared, ids[0]) if ids else None
        return {**asked, "campaign_id": ids[0]} if asked else None

    from flows.watcher import inbox_watcher_flow

    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(inbox_watcher_flow, audiences_dir=str(tmp_path / "audiences"), database=str(db),
                              spool_dir=str(tmp_path / "spool"), reports_dir=str(tmp_path / "reports"),
                              provider_base_url=sandbox, settle_s=0)
        asked = wait_for(waiting, timeout_s=120, what="the upload's campaign to wait for its approval", every_s=0.3)
        assert asked["origin"] == "upload" and not running.done()
        assert httpx.get(f"{sandbox}/_sandbox/stats?messages=0").json()["accepted"] == 0
        approve_from_cli(asked["campaign_id"], str(db), name="bob", comment="not this week", reject=True)
        [result] = running.result(timeout=120)
    assert result["outcome"] == "failed" and "rejected by bob: not this week" in result["reason"]
    assert httpx.get(f"{sandbox}/_sandbox/stats?messages=0").json()["accepted"] == 0
    with store.connect(db) as shared:
        assert [(h["origin"], h["decision"]) for h in history(shared, asked["campaign_id"])] == [("upload", "rejected")]
