"""The upload page, served on loopback by the webhook receiver's app when an upload token is configured
(`UPLOAD_TOKEN`): choose a campaign spec, upload an audience CSV, read the check (rejects by reason, the first
rejected rows masked, the cost estimate), then start the campaign.

Starting hands the CSV and the spec to the drop folder (pipeline/upload/check.py, pipeline/upload/inbox.py), where
the inbox watcher deployment starts it as its own Prefect run. An optional `Runs` (flows/upload_server.py:
this package never imports Prefect) starts the watcher at once instead of at its next minute, and tells the
page the runs' states and their Prefect UI links.

Every route but the empty form needs the token: the `X-Upload-Token` header or the form's `token` field;
the upload's answer then sets a session cookie (an HMAC of the token, never the token itself). A header or a
valid cookie is checked before the upload's body is read; the form's fields are bounded in number
(UPLOAD_MAX_FIELDS) and size (UPLOAD_MAX_FIELD_BYTES), and the whole body by the server (`body_limits`).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import shutil
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from pipeline.audience.load import AudienceError
from pipeline.audience.policy import PolicyError
from pipeline.dispatch.seeds import SeedError
from pipeline.masking import mask_text
from pipeline.render.templates import TemplateProblem
from pipeline.spec import SpecError
from pipeline.upload import check as upload_check
from pipeline.upload import inbox
from pipeline.upload import page as upload_page
from pipeline.upload import test_send as upload_test
from pipeline.upload.config import SESSION_COOKIE, TOKEN_ENV, TOKEN_HEADER, Runs, UploadConfig
from pipeline.upload.stream import ClientGone, UploadRefused, receive_upload

__all__ = ["SESSION_COOKIE", "TOKEN_ENV", "Runs", "UploadConfig", "WATCHER_DEPLOYMENT", "add_upload_routes",
           "install_from_env", "upload_routes"]

log = logging.getLogger(__name__)

# Input the operator has to fix: the page says what and where, never a traceback.
BAD_INPUT = (SpecError, AudienceError, TemplateProblem, PolicyError)
REFRESH_S = 3
WATCHER_DEPLOYMENT = "inbox-watcher/audience-inbox"  # prefect.yaml's drop-folder watcher


def list_specs(specs_dir: Path) -> list[str]:
    if not specs_dir.is_dir():
        return []
    return sorted(p.name for p in specs_dir.iterdir()
                  if p.is_file() and p.suffix in inbox.SPEC_SUFFIXES and not p.name.startswith("."))


def authorise(config: UploadConfig, request: Request, fields: Mapping[str, str] | None = None) -> None:
    """Raises UploadRefused: 401 without a token, 403 with a wrong one. Compared in constant time."""
    given = request.headers.get(TOKEN_HEADER) or (fields or {}).get("token")
    if given:
        if hmac.compare_digest(given.encode(), config.token.encode()):
            return
        raise UploadRefused(403, "wrong upload token")
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie and hmac.compare_digest(cookie.encode(), config.session.encode()):
        return
    raise UploadRefused(401, "enter the upload token")


def upload_routes(config: UploadConfig) -> list[Route]:
    one_check_at_a_time = asyncio.Lock()  # preparing a large file takes memory and CPU: never two at once

    def form_page(request: Request, error: UploadRefused | None = None, chosen: str | None = None) -> Response:
        html = upload_page.upload_form(list_specs(config.specs_dir), config.max_bytes / 1_000_000,
                                       error=error.message if error else None, chosen=chosen)
        return HTMLResponse(html, status_code=error.status if error else 200)

    async def show_form(request: Request) -> Response:
        return form_page(request)

    async def upload(request: Request) -> Response:
        upload_check.prune(config.staging_dir)
        upload_id = upload_check.new_upload_id()
        folder = config.staging_dir / upload_id
        try:
            if request.headers.get(TOKEN_HEADER):
                authorise(config, request)  # before a byte of the body is read
            received = await receive_upload(request.headers, request.receive, folder, max_bytes=config.max_bytes,
                                            check_token=lambda fields: authorise(config, request, fields),
                                            max_fields=config.max_fields, max_field_bytes=config.max_field_bytes)
            spec_name = received.fields.get("spec", "")
            if spec_name not in list_specs(config.specs_dir):
                raise UploadRefused(400, "choose one of the campaign specs")
            uploader = uploaded_by(received.fields)
            upload_check.copy_spec(config.specs_dir / spec_name, folder / upload_check.SPEC_FILE, uploader)
        except UploadRefused as refused:
            shutil.rmtree(folder, ignore_errors=True)
            log.info("upload refused (%d): %s", refused.status, refused.message)
            answer = form_page(request, refused)
            answer.headers["connection"] = "close"  # what the client may still send is not read
            return answer
        except ClientGone:
            shutil.rmtree(folder, ignore_errors=True)
            return Response(status_code=400)
        log.info("upload %s: %s (%d bytes), spec %s", upload_id, received.path.name, received.size, spec_name)
        staged = upload_check.Staged(folder)
        async with one_check_at_a_time:
            refused = await run_in_threadpool(_check, staged, spec_name, received.original_name)
        if refused is not None:
            shutil.rmtree(folder, ignore_errors=True)  # nothing of a refused upload stays on disk
            return form_page(request, refused, chosen=spec_name)
        answer = RedirectResponse(f"/upload/{upload_id}", status_code=303)
        answer.set_cookie(SESSION_COOKIE, config.session, httponly=True, samesite="strict", path="/upload")
        return answer

    def staged_or_refuse(request: Request, fields: Mapping[str, str] | None = None) -> upload_check.Staged:
        authorise(config, request, fields)
        found = upload_check.staged(config.staging_dir, request.path_params["upload_id"])
        if found is None:
            raise UploadRefused(404, "no such upload (uploads not started are kept for a day)")
        return found

    async def show(request: Request) -> Response:
        try:
            staged = staged_or_refuse(request)
        except UploadRefused as refused:
            return form_page(request, refused)
        return await upload_view(staged)

    async def upload_view(staged: upload_check.Staged, start_error: str | None = None) -> Response:
        """The upload's page: its check, then its Start button (with why the last start failed) or its status."""
        summary = staged.summary()
        assert summary is not None
        body = upload_page.summary_section(summary)
        status = await run_in_threadpool(_status, config, staged)
        if status is None:
            if start_error:
                body += upload_page.error_box(f"Could not start: {start_error}.")
            body += upload_page.start_form(staged.upload_id, upload_check.startable(summary))
        else:
            body += upload_page.status_section(status)
        body += upload_page.test_send_section(staged.upload_id, upload_test.last_results(staged))
        body += '<p><a href="/upload" id="another">Upload another audience</a></p>'
        refresh = REFRESH_S if status is not None and not status["final"] else None
        return HTMLResponse(upload_page.page("Audience check", body, refresh_s=refresh),
                            status_code=503 if start_error else 200)

    async def start(request: Request) -> Response:
        try:
            staged = staged_or_refuse(request)
            summary = staged.summary()
            assert summary is not None
            blocked = upload_check.startable(summary)
            if blocked:
                raise UploadRefused(409, f"cannot start: {blocked}")
        except UploadRefused as refused:
            return form_page(request, refused)
        if staged.started() is None and staged.csv is not None:
            # A file younger than the watcher's settle time would be left for its next round: wait it out. The
            # watcher looks at the newer of the CSV and its spec, which is copied after the file has arrived.
            age = time.time() - max(staged.csv.stat().st_mtime, staged.spec.stat().st_mtime)
            await asyncio.sleep(max(0.0, upload_check.WATCHER_SETTLE_S - age))
            start_error = await run_in_threadpool(_start, config, staged)
            if start_error is not None:
                return await upload_view(staged, start_error)
        return RedirectResponse(f"/upload/{staged.upload_id}", status_code=303)

    async def test_send(request: Request) -> Response:
        """The form's seeds (bounded by the seeds' settings and the page's field size) sent the staged rows."""
        try:
            fields = await upload_test.read_small_form(request, max_bytes=3 * config.max_field_bytes,
                                                       max_fields=config.max_fields)
            staged = staged_or_refuse(request, fields)
        except UploadRefused as refused:
            return form_page(request, refused)
        async with one_check_at_a_time:
            error = await run_in_threadpool(_test_send, config, staged, fields)
        if error is None:
            return RedirectResponse(f"/upload/{staged.upload_id}", status_code=303)
        body = upload_page.test_send_section(staged.upload_id, upload_test.last_results(staged), error=error)
        return HTMLResponse(upload_page.page("Test send", body), status_code=422)

    async def rejects_csv(request: Request) -> Response:
        try:
            staged = staged_or_refuse(request)
        except UploadRefused as refused:
            return form_page(request, refused)
        path = staged.root / "prepared" / "rejects.csv"
        if not path.exists():
            return form_page(request, UploadRefused(404, "no rejects file for this upload"))
        return FileResponse(path, media_type="text/csv", filename=f"rejects-{staged.upload_id}.csv")

    return [
        Route("/upload", show_form, methods=["GET"]),
        Route("/upload", upload, methods=["POST"]),
        Route("/upload/{upload_id}", show, methods=["GET"]),
        Route("/upload/{upload_id}/start", start, methods=["POST"]),
        Route("/upload/{upload_id}/rejects.csv", rejects_csv, methods=["GET"]),
        Route("/upload/{upload_id}/test-send", test_send, methods=["POST"]),
    ]


def uploaded_by(fields: Mapping[str, str]) -> str:
    """The uploader's name from the form: needed, as whoever uploads may not approve the campaign."""
    name = " ".join(fields.get("uploaded_by", "").split())
    if not name:
        raise UploadRefused(400, "give your name (uploaded_by): the campaign's approver must be someone else")
    if len(name) > upload_page.MAX_NAME:
        raise UploadRefused(400, f"your name (uploaded_by) is longer than {upload_page.MAX_NAME} characters")
    return name


def add_upload_routes(app: Any, config: UploadConfig) -> None:
    """Installs the upload page on a receiver app (`pipeline.receipts.receiver.create_receiver_app`), and
    declares its body bound to the server (pipeline.servers.BodyLimit)."""
    app.router.routes.extend(upload_routes(config))
    limits = getattr(app, "body_limits", None)
    if limits is not None:
        limits["/upload"] = config.body_bytes


def install_from_env(app: Any, environ: Mapping[str, str] | None = None, **overrides: Any) -> UploadConfig | None:
    """The page on `app` when UPLOAD_TOKEN is set (`campaign webhooks`); returns its configuration."""
    config = UploadConfig.from_env(environ, **overrides)
    if config is not None:
        add_upload_routes(app, config)
    return config


def _check(staged: upload_check.Staged, spec_name: str, original_name: str) -> UploadRefused | None:
    """Runs the check in a worker thread; bad input becomes the message the page shows."""
    try:
        upload_check.check(staged, spec_name)
        return None
    except BAD_INPUT as exc:
        message = str(exc)
        csv = staged.csv
        for path, name in ((staged.spec, spec_name), (csv, original_name)):
            if path is not None:
                message = message.replace(str(path), name)
        return UploadRefused(422, mask_text(message))
    except Exception:  # our bug: logged (masked) for us, a plain message for the operator
        log.error("checking upload %s failed:\n%s", staged.upload_id, mask_text(traceback.format_exc()))
        return UploadRefused(500, "the upload could not be checked because of an internal error (see the server "
                                  "log); nothing was started")


def _test_send(config: UploadConfig, staged: upload_check.Staged, fields: Mapping[str, str]) -> str | None:
    """Runs a test send in a worker thread; input the operator has to fix becomes the message the page shows."""
    try:
        upload_test.test_send(staged, fields.get("seeds", ""), fields.get("rows", ""), database=config.database,
                              base_url=config.provider_base_url, variant_text=fields.get("variant", ""))
        return None
    except (*BAD_INPUT, SeedError) as exc:
        return mask_text(str(exc).replace(str(staged.root), "upload"))


def _start(config: UploadConfig, staged: upload_check.Staged) -> str | None:
    """Hands the upload over in a worker thread; returns why it could not (for the page), else None."""
    try:
        record = upload_check.hand_over(staged, config.folders)
    except upload_check.HandOverFailed as exc:
        log.warning("upload %s: %s", staged.upload_id, mask_text(str(exc)))
        return mask_text(str(exc))
    except Exception:  # our bug: logged (masked) for us, a plain message for the operator
        log.error("starting upload %s failed:\n%s", staged.upload_id, mask_text(traceback.format_exc()))
        return "the upload could not be handed over because of an internal error (see the server log); " \
               "nothing was started"
    if record is None or config.runs is None:
        return None
    try:
        record["watcher_run_id"] = config.runs.start_watcher(config.audiences_dir.resolve())
    except Exception as exc:  # no server, no such deployment: the watcher's schedule still takes the file
        log.warning("upload %s: starting the inbox watcher failed: %s", staged.upload_id, exc)
        record["start_error"] = mask_text(str(exc))[:300]
    upload_check.write_started(staged, record)
    return None


def _status(config: UploadConfig, staged: upload_check.Staged) -> dict[str, Any] | None:
    """Where a started upload is: the watcher's decision and, through `Runs`, the runs' states and links."""
    started = staged.started()
    if started is None:
        return None
    status: dict[str, Any] = {**started, "outcome": upload_check.watcher_outcome(config.folders,
                                                                               started["inbox_file"])}
    runs, outcome = config.runs, status["outcome"]
    if runs is None:
        status["waiting"] = "Waiting for the inbox watcher (the audience-inbox deployment checks every minute)"
        status["final"] = outcome is not None
        return status
    watcher_done = True  # no watcher run of ours to wait for (the schedule picked the file up)
    if status.get("watcher_run_id"):
        status["watcher_run_url"] = runs.url(status["watcher_run_id"])
        state = runs.state(status["watcher_run_id"])
        status["watcher_state"] = state[0] if state else None
        watcher_done = bool(state and state[1])
    campaign_run = outcome.get("flow_run_id") if outcome else None
    campaign_state = runs.state(campaign_run) if campaign_run else None
    if campaign_run:
        status["campaign_run_url"] = runs.url(campaign_run)
        status["campaign_state"] = campaign_state[0] if campaign_state else None
    # Final once the watcher refused the file, or the campaign run ended. A "started" outcome without a
    # run id is final only when the watcher's run has ended (the campaign ran inside it): the watcher
    # writes its decision before it starts the campaign's deployment run and adds the run id after.
    status["final"] = outcome is not None and (
        outcome["outcome"] == "failed"
        or (bool(campaign_state and campaign_state[1]) if campaign_run else watcher_done))
    return status
