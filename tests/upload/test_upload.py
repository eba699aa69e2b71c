"""The upload page on the receiver's app, over loopback HTTP: the token, the streamed upload and its limit,
the check (rejects by reason, first rejects masked and escaped, the estimate), bad input as messages, and the
start handing the file and its spec to the drop folder, then following the watcher's decision."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from pipeline.receipts.receiver import create_receiver_app
from pipeline.upload import inbox
from pipeline.upload.routes import SESSION_COOKIE, install_from_env
from pipeline.upload.stream import UploadRefused, receive_upload, safe_csv_name
from tests.helpers.upload import (
    HEADER,
    TOKEN,
    UPLOADER,
    FakeRuns,
    Page,
    audience,
    serve_page,
    upload_config,
    visible_text,
)

ROOT = Path(__file__).resolve().parents[2]


def _staged_files(page: Page) -> list[Path]:
    root = page.config.staging_dir
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


# --- the form and the token -----------------------------------------------------------------------------------


def test_the_form_lists_the_specs_and_asks_for_nothing_from_the_network(page: Page):
    answer = page.client.get("/upload")
    assert answer.status_code == 200
    options = re.findall(r'<option value="([^"]+)"', answer.text)
    assert options == ["broken.yaml", "tight-budget.yaml", "welcome.yaml"]
    assert not re.search(r'(src|href)="(https?:)?//', answer.text)  # no external asset: works offline
    # The token field comes before the file, so the server checks it before writing the file.
    assert answer.text.index('name="token"') < answer.text.index('name="file"')


def test_no_token_401_wrong_token_403_and_nothing_written(page: Page):
    csv = audience(5)
    missing = page.upload(csv, token=None)
    wrong = page.upload(csv, token="not-the-token-at-all")
    assert (missing.status_code, wrong.status_code) == (401, 403)
    assert "enter the upload token" in missing.text and "wrong upload token" in wrong.text
    assert _staged_files(page) == []
    # The token after the file is too late: the file would already be on disk.
    late = page.client.post("/upload", files=[("spec", (None, "welcome.yaml")), ("file", ("a.csv", csv, "text/csv")),
                                              ("token", (None, TOKEN))])
    assert late.status_code == 401
    # Every page of an upload needs the token (or the session cookie the upload sets).
    ok = page.upload(csv)
    assert ok.status_code == 200 and ok.history[0].status_code == 303
    assert httpx.get(str(ok.url)).status_code == 401
    assert httpx.get(str(ok.url), cookies={SESSION_COOKIE: "forged"}).status_code == 401
    assert httpx.get(str(ok.url), headers={"X-Upload-Token": TOKEN}).status_code == 200


def test_the_session_cookie_is_http_only_strict_and_not_the_token(page: Page):
    answer = page.upload(audience(5))
    cookie = answer.history[0].headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=") and TOKEN not in cookie
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/upload" in cookie


def test_a_header_token_works_for_scripts(page: Page):
    answer = httpx.post(f"{page.url}/upload", headers={"X-Upload-Token": TOKEN},
                        data={"spec": "welcome.yaml", "uploaded_by": "script"},
                        files={"file": ("list.csv", audience(5), "text/csv")}, follow_redirects=True)
    assert answer.status_code == 200 and "rows read" in answer.text


def test_the_token_never_reaches_the_log(page: Page, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG)
    page.upload(audience(5))
    page.upload(audience(5), token="wrong-token-value-123456")
    assert caplog.records and TOKEN not in caplog.text and "wrong-token-value-123456" not in caplog.text


def test_the_configuration_needs_a_long_enough_token(tmp_path: Path, specs: Path):
    app = create_receiver_app(tmp_path / "spool", {"whatsapp_app_secret": "s"})
    assert install_from_env(app, {}) is None  # no token, no page
    with pytest.raises(ValueError, match="at least 16 characters"):
        install_from_env(app, {"UPLOAD_TOKEN": "short"})
    config = install_from_env(app, {"UPLOAD_TOKEN": TOKEN, "UPLOAD_MAX_MB": "2.5"}, specs_dir=specs)
    assert config is not None and config.max_bytes == 2_500_000 and TOKEN not in repr(config)
    assert {r.path for r in app.routes} >= {"/upload", "/upload/{upload_id}", "/upload/{upload_id}/start"}


# --- streaming and the size limit ------------------------------------------------------------------------------


def _multipart(fields: dict[str, str], name: str, content: bytes) -> tuple[bytes, str]:
    boundary = "----upload-test-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                 "Content-Type: text/csv\r\n\r\n".encode() + content + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_the_file_reaches_the_disk_while_the_body_is_still_arriving(tmp_path: Path):
    content = (HEADER + "\n").encode() + b"+447700900123,GB,Ann,Leeds,C-1,yes\n" * 30_000  # ~1 MB
    body, content_type = _multipart({"token": TOKEN}, "big.csv", content)
    chunks = [body[i:i + 65536] for i in range(0, len(body), 65536)]
    on_disk: list[int] = []

    async def receive() -> dict[str, Any]:
        part = tmp_path / "up" / "big.csv.part"
        on_disk.append(part.stat().st_size if part.exists() else 0)
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    received = asyncio.run(receive_upload({"content-type": content_type}, receive, tmp_path / "up",
                                          max_bytes=10_000_000, check_token=lambda fields: None))
    assert received.path == tmp_path / "up" / "big.csv" and received.path.read_bytes() == content
    assert not (tmp_path / "up" / "big.csv.part").exists()
    # When the last chunk was asked for, all but the last chunk's worth (and a write buffer) was on disk.
    assert on_disk == sorted(on_disk) and on_disk[-1] >= len(content) - 2 * 65536


def test_over_the_limit_413_with_a_message_and_nothing_kept(tmp_path: Path, specs: Path):
    for page in serve_page(upload_config(tmp_path, specs, max_bytes=2_000), tmp_path):
        big = audience(200)
        declared = page.upload(big)  # refused from its Content-Length, before reading it
        assert declared.status_code == 413 and "larger than the upload limit of 0.002 MB" in declared.text
        # Without a Content-Length (chunked), the count while streaming stops it.
        body, content_type = _multipart({"token": TOKEN, "spec": "welcome.yaml"}, "big.csv", big.encode())
        streamed = page.client.post("/upload", content=iter([body[i:i + 500] for i in range(0, len(body), 500)]),
                                    headers={"content-type": content_type})
        assert "content-length" not in streamed.request.headers
        assert streamed.status_code == 413 and "larger than the upload limit" in streamed.text
        assert _staged_files(page) == []
        assert page.upload(audience(3)).status_code == 200  # under the limit


def test_file_names_are_sanitised():
    assert safe_csv_name("../../etc/Spring list (v2).CSV") == "Spring-list-v2.csv"
    assert safe_csv_name("C:\\Users\\me\\<b>x.csv") == "b-x.csv"
    assert safe_csv_name("....csv") == "audience.csv"
    with pytest.raises(UploadRefused, match="not a CSV"):
        safe_csv_name("list.csv.exe")


# --- the check -------------------------------------------------------------------------------------------------


def test_the_check_shows_counts_first_rejects_masked_and_escaped_and_the_estimate(page: Page):
    hostile = '+447700900123,GB,<script>alert(1)</script>,=HYPERLINK("http://x"),C-9,no'
    answer = page.upload(audience(60, hostile), name="../Spring list.csv")
    assert answer.status_code == 200
    text = visible_text(answer.text)
    assert "Spring-list.csv with spec welcome.yaml" in text
    counts = dict(re.findall(r"<tr><td>([a-z_]+)</td><td class=n>(\d+)</td></tr>",
                             answer.text.split('id="reject-counts"')[1].split("</table>")[0]))
    # (+44 7700 900123 is in Ofcom's drama range: not a valid number.)
    assert counts == {"no_opt_in": "3", "bad_row": "1", "blocked_country": "1", "duplicate": "1", "invalid_number": "1"}
    assert "rows read accepted rejected 61 54 7" in text
    # The first rejects: masked numbers, no raw number anywhere, HTML escaped, formulas defused.
    first = answer.text.split('id="first-rejects"')[1].split("</table>")[0]
    assert "&#x27;+91*******397" in first and "+91 81234 36397" not in answer.text
    assert "+447700900123" not in answer.text and "+44*******123" in first
    assert "<script>" not in answer.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in first
    assert "&#x27;=HYPERLINK(" in first
    # The estimate: the flow's own pricing over the accepted rows.
    estimate = visible_text(answer.text.split('id="estimate"')[1])
    assert re.search(r"messages 54 platform fees \(USD\) [\d.]+ service fees \(USD\) 0\.270000 total \(USD\) ",
                     estimate)
    assert 'id="start"' in answer.text
    # Every rejected row, unmasked for the operator but spreadsheet-safe, as a download.
    rejects = page.client.get(str(answer.url) + "/rejects.csv")
    assert rejects.status_code == 200 and rejects.text.count("\n") == 8 and "'=HYPERLINK" in rejects.text


@pytest.mark.parametrize(("name", "content", "spec", "status", "message"), [
    ("notes.txt", "hello", "welcome.yaml", 415, "notes.txt is not a CSV file"),
    ("empty.csv", "", "welcome.yaml", 400, "empty.csv is empty"),
    ("list.csv", audience(3), "broken.yaml", 422, "broken.yaml: invalid campaign spec: channel"),
    ("list.csv", audience(3), "../campaigns/welcome.yaml", 400, "choose one of the campaign specs"),
    ("list.csv", "mobile,opt_in\n+447700900123,yes\n", "welcome.yaml", 422, "list.csv: missing required column"),
    ("list.csv", "phone;opt_in\n+447700900123;yes\n", "welcome.yaml", 422, "is the separator ';'"),
    ("list.csv", b"phone,country,first_name,city,coupon,opt_in\n+447700900123,GB,J\xe9r,Leeds,C,yes\n",
     "welcome.yaml", 422, "line 2 is not valid UTF-8"),
])
def test_bad_input_gets_a_message_never_a_traceback(page: Page, name: str, content: Any, spec: str, status: int,
                                                    message: str):
    answer = page.upload(content, name=name, spec=spec)
    assert answer.status_code == status
    error = visible_text(answer.text.split('id="error"')[1].split("</p>")[0])
    assert message in error, error
    assert "Traceback" not in answer.text and str(page.config.staging_dir) not in answer.text
    assert 'id="upload-form"' in answer.text  # the form again, to try once more
    assert _staged_files(page) == []  # nothing of a refused upload stays


def test_the_uploader_names_themself_and_the_name_is_bounded(page: Page):
    """Whoever uploads may not approve the campaign (flows/approval.py): the form asks for their name."""
    assert 'name="uploaded_by"' in page.client.get("/upload").text
    for name, why in (("  ", "give your name"), ("x" * 101, "longer than 100 characters")):
        answer = page.upload(audience(5), uploaded_by=name)
        assert answer.status_code == 400 and why in answer.text
    assert _staged_files(page) == []
    checked = page.upload(audience(5), uploaded_by="  Ann   O'Neil ")
    assert checked.status_code == 200
    [spec] = page.config.staging_dir.glob("*/spec.yaml")
    assert yaml.safe_load(spec.read_text())["uploaded_by"] == "Ann O'Neil"


def test_all_rows_rejected_shows_the_counts_and_cannot_start(page: Page):
    answer = page.upload(f"{HEADER}\n+33 6 12 36 56 37,FR,Hugo,Paris,C-1,no\n+1 201-552-0895,,Liam,Austin,C-2,no\n")
    assert answer.status_code == 200
    assert "no_opt_in" in answer.text and 'id="start"' not in answer.text
    assert "no eligible recipient" in visible_text(answer.text.split('id="cannot-start"')[1])
    assert "No message to price" in answer.text
    refused = page.client.post(str(answer.url) + "/start")
    assert refused.status_code == 409 and not (page.config.audiences_dir / "inbox").exists()


def test_over_budget_shows_why_and_cannot_start(page: Page):
    answer = page.upload(audience(30), spec="tight-budget.yaml")
    assert "is over the budget USD 0.01" in visible_text(answer.text.split('id="cannot-start"')[1])
    assert 'id="start"' not in answer.text


# --- starting --------------------------------------------------------------------------------------------------


def test_start_hands_the_file_and_its_spec_to_the_drop_folder_once(page: Page):
    checked = page.upload(audience(20), name="spring.csv")
    upload_id = str(checked.url).rsplit("/", 1)[1]
    started = page.client.post(str(checked.url) + "/start")
    again = page.client.post(str(checked.url) + "/start")
    assert started.status_code == again.status_code == 200
    folders = page.config.folders
    name = f"spring-{upload_id}"
    assert sorted(p.name for p in folders.inbox.iterdir()) == [f"{name}.csv", f"{name}.yaml"]  # no .part left
    assert yaml.safe_load((folders.inbox / f"{name}.yaml").read_text()) == {
        **yaml.safe_load((ROOT / "campaigns/welcome.yaml").read_text()), "uploaded_by": UPLOADER}
    assert (folders.inbox / f"{name}.csv").read_text() == audience(20)
    # The watcher takes it at once (the start waited out its settle time), with the spec beside it.
    [ready] = inbox.ready_uploads(folders.inbox)
    assert ready.path.name == f"{name}.csv" and ready.sidecar is not None
    assert page.config.runs.started == [page.config.audiences_dir.resolve()]  # type: ignore[union-attr]
    text = visible_text(again.text)
    assert f"Handed to the drop folder as {name}.csv" in text and "Watcher run: watcher-1 — Running" in text
    assert '<meta http-equiv="refresh"' in again.text  # the page follows the run
    assert 'id="start"' not in again.text

    # The watcher decides: the campaign id carries the upload id, and the page links the campaign's run.
    claimed = inbox.claim(ready, folders)
    assert claimed is not None and upload_id in claimed.campaign_id
    # The watcher writes its decision before it starts the campaign's run: not the end yet.
    moved = inbox.finish(claimed, folders, "started", details={})
    deciding = page.client.get(str(checked.url))
    assert '<meta http-equiv="refresh"' in deciding.text
    inbox.finish(moved, folders, "started", details={"flow_run_id": "campaign-run-1"})
    page.config.runs.states["campaign-run-1"] = ("Running", False)  # type: ignore[union-attr]
    running = page.client.get(str(checked.url))
    assert f"Campaign {claimed.campaign_id} : started" in visible_text(running.text)
    assert 'href="http://127.0.0.1:4200/runs/flow-run/campaign-run-1"' in running.text
    assert '<meta http-equiv="refresh"' in running.text
    page.config.runs.states["campaign-run-1"] = ("Completed", True)  # type: ignore[union-attr]
    done = page.client.get(str(checked.url))
    assert "Campaign run: campaign-run-1 — Completed" in visible_text(done.text)
    assert '<meta http-equiv="refresh"' not in done.text


def test_a_refused_upload_shows_the_watchers_reason(page: Page):
    checked = page.upload(audience(10))
    page.client.post(str(checked.url) + "/start")
    folders = page.config.folders
    [ready] = inbox.ready_uploads(folders.inbox, settle_s=0)
    claimed = inbox.claim(ready, folders)
    assert claimed is not None
    inbox.finish(claimed, folders, "failed", reason="could not start the campaign through deployment 'x'")
    text = visible_text(page.client.get(str(checked.url)).text)
    assert f"Campaign {claimed.campaign_id} : failed — could not start the campaign" in text


def test_without_prefect_the_schedule_takes_the_file(tmp_path: Path, specs: Path):
    for page in serve_page(upload_config(tmp_path, specs, runs=FakeRuns(fail=True)), tmp_path):
        checked = page.upload(audience(10))
        text = visible_text(page.client.post(str(checked.url) + "/start").text)
        assert "could not be started now (Deployment 'inbox-watcher/audience-inbox' not found)" in text
        assert len(list(page.config.folders.inbox.glob("*.csv"))) == 1
    for page in serve_page(upload_config(tmp_path / "b", specs), tmp_path / "b"):
        checked = page.upload(audience(10))
        text = visible_text(page.client.post(str(checked.url) + "/start").text)
        assert "Waiting for the inbox watcher (the audience-inbox deployment checks every minute)" in text


def test_unknown_uploads_are_404(page: Page):
    page.upload(audience(3))  # for the session cookie
    for path in ("/upload/0123456789abcdef", "/upload/0123456789ABCDEF", "/upload/0123456789abcdef/rejects.csv"):
        answer = page.client.get(path)
        assert answer.status_code == 404 and "no such upload" in answer.text, path
    assert page.client.get("/upload/..%2F..%2Fetc").status_code == 404
    summary = json.loads(next(page.config.staging_dir.glob("*/summary.json")).read_text())
    assert summary["rows_read"] == 3
