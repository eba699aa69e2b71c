"""What the upload page checks and hands over: an uploaded audience prepared (dry run) with the chosen spec,
its rejects and cost estimate, and, on the operator's word, the file and spec moved into the drop folder.

Each upload has a staging folder `<staging>/<upload_id>/`: the CSV, `spec.yaml` (a copy of the chosen spec,
so what runs is what was checked), `prepared/` (rejects.csv for download) and `summary.json`. The drop folder
(pipeline/upload/inbox.py) then does the rest, exactly as for a file copied there by hand: the watcher checks it
again, gives it its campaign id and starts the campaign as its own Prefect run.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from pipeline import store
from pipeline.audience.policy import blocked_policy
from pipeline.channels.base import Outgoing
from pipeline.costs.costing import estimate_cost, load_prices
from pipeline.dispatch.budget import OverBudget, check_budget
from pipeline.dispatch.outbox import enqueue_messages, register_campaign
from pipeline.masking import mask_phone, mask_text
from pipeline.render.prepare import Prepared, escape_formulas, prepare_audience
from pipeline.spec import CampaignSpec
from pipeline.upload import inbox

SPEC_FILE, SUMMARY_FILE, STARTED_FILE = "spec.yaml", "summary.json", "started.json"
UPLOAD_ID = re.compile(r"[0-9a-f]{16}")
SHOWN_REJECTS = 20
# The watcher leaves files younger than this alone (inbox.ready_uploads' default `settle_s`).
WATCHER_SETTLE_S = 2.0


def new_upload_id() -> str:
    return secrets.token_hex(8)


@dataclass(frozen=True)
class Staged:
    """One upload's staging folder."""

    root: Path

    @property
    def upload_id(self) -> str:
        return self.root.name

    @property
    def csv(self) -> Path | None:
        return next(iter(sorted(self.root.glob("*.csv"))), None)

    @property
    def spec(self) -> Path:
        return self.root / SPEC_FILE

    def summary(self) -> dict[str, Any] | None:
        return _read_json(self.root / SUMMARY_FILE)

    def started(self) -> dict[str, Any] | None:
        return _read_json(self.root / STARTED_FILE)


def staged(staging_dir: Path, upload_id: str) -> Staged | None:
    if not UPLOAD_ID.fullmatch(upload_id) or not (staging_dir / upload_id / SUMMARY_FILE).exists():
        return None
    return Staged(staging_dir / upload_id)


def prune(staging_dir: Path, older_than_s: float = 24 * 3600) -> None:
    """Staging folders of uploads nobody started (or long started) go after a day: they hold personal data."""
    if not staging_dir.is_dir():
        return
    cutoff = time.time() - older_than_s
    for folder in staging_dir.iterdir():
        if UPLOAD_ID.fullmatch(folder.name) and folder.stat().st_mtime < cutoff:
            shutil.rmtree(folder, ignore_errors=True)


def check(upload: Staged, spec_name: str, *, shown: int = SHOWN_REJECTS) -> dict[str, Any]:
    """Prepares the staged CSV with the staged spec as the watcher will (same spec resolution, same stages) and
    writes `summary.json`: counts by reject reason, the first rejected rows masked, the cost estimate. Raises
    SpecError / AudienceError / TemplateProblem / PolicyError for input the operator has to fix."""
    csv = upload.csv
    assert csv is not None, "check() runs on a staged upload"
    campaign_id = inbox.campaign_id_for(csv.name, datetime.now(UTC))
    claimed = inbox.Claimed(campaign_id, csv.name, csv, None, datetime.now(UTC))
    spec, _ = inbox.resolve_spec(claimed, upload.spec, csv)
    prepared = prepare_audience(
        csv, channel=spec.channel, category=spec.template.category, template=spec.template,
        variables=spec.variables, policy=blocked_policy(spec.channel, spec.blocked_countries),
        out_dir=upload.root / "prepared",
    )
    for frame in ("accepted.parquet", "rejects.parquet"):  # the run prepares again; keep only rejects.csv
        (upload.root / "prepared" / frame).unlink(missing_ok=True)
    summary: dict[str, Any] = {
        "upload_id": upload.upload_id, "file": csv.name, "spec": spec_name, "channel": spec.channel,
        "template": spec.template.name, "category": spec.template.category,
        "rows_read": prepared.rows_read, "accepted": prepared.accepted.height, "rejected": prepared.rejects.height,
        "rejects_by_reason": dict(sorted(prepared.counts.items(), key=lambda kv: (-kv[1], kv[0]))),
        "first_rejects": first_rejects(prepared.rejects, shown),
        "estimate": estimate(spec, campaign_id, prepared) if prepared.accepted.height else None,
        "checked_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    _write_json(upload.root / SUMMARY_FILE, summary)
    return summary


def first_rejects(rejects: pl.DataFrame, n: int) -> dict[str, Any]:
    """The first `n` rejected rows for the page: phone numbers and e-mail addresses masked, cells a spreadsheet
    would run as formulas prefixed with ' (as in rejects.csv). HTML escaping is the page's job."""
    head = rejects.head(n)
    text = [c for c, t in head.schema.items() if t == pl.String and c != "reason"]
    masked = head.with_columns(
        pl.col(c).map_elements(_mask_number if c == "phone" else mask_text, return_dtype=pl.String) for c in text
    )
    return {"columns": masked.columns, "rows": escape_formulas(masked).rows()}


def _mask_number(written: str) -> str:
    """The phone cell as written, masked like a log line ('+44 7700 900123' -> '+44*******123')."""
    return mask_phone(re.sub(r"[^\d+]", "", written) or written)


class _PricingOnly:
    """Queues messages for the estimate only: nothing is sent, so no provider or credentials are needed.
    The estimate reads channel, country and category, and counts SMS parts from `Body`."""

    def __init__(self, name: str) -> None:
        self.name = name

    def build_payload(self, message: Outgoing) -> dict[str, Any]:
        return {"Body": message.text}


def estimate(spec: CampaignSpec, campaign_id: str, prepared: Prepared) -> dict[str, Any]:
    """The campaign flow's estimate (pipeline.costs.costing.estimate_cost over the queued messages) on a throwaway
    store (a SQLite file in a temporary folder, removed after), and whether it is over the spec's budget."""
    with tempfile.TemporaryDirectory(prefix="campaign-estimate-") as folder, \
            store.connect(Path(folder) / "estimate.sqlite") as db:
        register_campaign(db, spec, campaign_id)
        enqueue_messages(db, spec, campaign_id, _PricingOnly(spec.channel), prepared.accepted,  # type: ignore[arg-type]
                         senders=spec.all_senders)
        load_prices(db, service_fee_usd=spec.service_fee_usd if spec.service_fee_usd is not None else 0.005)
        result = estimate_cost(db, campaign_id, record=False)
    over_budget = None
    try:
        check_budget(float(result.total_usd), spec.budget_usd, campaign_id)
    except OverBudget as exc:
        over_budget = str(exc).split(": ", 1)[1]
    by_country = result.by_country.sort("total_usd", descending=True).head(10)
    return {
        "messages": result.messages, "total_usd": str(result.total_usd),
        "platform_fee_usd": str(result.platform_fee_usd), "service_fee_usd": str(result.service_fee_usd),
        "unpriced": result.unpriced, "priced_on": result.priced_on.isoformat(), "budget_usd": spec.budget_usd,
        "over_budget": over_budget,
        "by_country": [[r["country"], r["category"], r["messages"], str(r["total_usd"])]
                       for r in by_country.iter_rows(named=True)],
    }


def startable(summary: dict[str, Any]) -> str | None:
    """Why the upload cannot start, or None."""
    if summary["accepted"] == 0:
        return "no eligible recipient: every row was rejected, so there is nothing to send"
    if summary["estimate"] and summary["estimate"]["over_budget"]:
        return summary["estimate"]["over_budget"]
    return None


def inbox_name(upload: Staged) -> str:
    """`<stem>-<upload_id>.csv`: unique, and within the 40 characters of a campaign id's name part, so the
    watcher's campaign id carries the upload id and its reason file can be found again."""
    csv = upload.csv
    stem = csv.stem if csv is not None else "audience"
    return f"{stem[:23].strip('-_') or 'audience'}-{upload.upload_id}.csv"


def copy_spec(source: Path, target: Path, uploaded_by: str) -> None:
    """The chosen spec, as the upload's own copy, naming who uploaded the audience (a key of its own at the end:
    the spec's text and comments stay as they are; a JSON string is a YAML scalar)."""
    text = source.read_text(encoding="utf-8")
    target.write_text(f"{text.rstrip()}\nuploaded_by: {json.dumps(uploaded_by)}\n", encoding="utf-8")


class HandOverFailed(Exception):
    """The drop folder could not take the upload. Nothing of it was left there and Start may be clicked again;
    the message names what failed, for the page."""


def hand_over(upload: Staged, folders: inbox.Folders) -> dict[str, Any] | None:
    """Moves the spec (as the sidecar `<name>.yaml`) and then the CSV into the inbox, each as `.part` renamed
    into place, so the watcher never sees a CSV without its spec. Returns the start record, or None when this
    upload was started before (a second click). Raises HandOverFailed (an OSError on the way) after putting
    back what had moved and releasing the lock: a failed start must not make the upload unstartable."""
    csv = upload.csv
    assert csv is not None, "hand_over() runs on a checked upload"
    lock = upload.root / f"{STARTED_FILE}.lock"
    try:  # exclusive: one start per upload, however many clicks
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return None
    os.close(fd)
    name = inbox_name(upload)
    spec_target, csv_target = folders.inbox / f"{Path(name).stem}.yaml", folders.inbox / name
    csv_partial = csv_target.with_name(csv_target.name + ".part")
    moved: list[tuple[Path, tuple[Path, ...]]] = []
    try:
        folders.inbox.mkdir(parents=True, exist_ok=True)
        spec_partial = spec_target.with_name(spec_target.name + ".part")
        moved.append((upload.spec, (spec_partial, spec_target)))
        shutil.move(upload.spec, spec_partial)  # a rename on one file system; keeps the upload's mtime
        os.replace(spec_partial, spec_target)
        moved.append((csv, (csv_partial,)))
        shutil.move(csv, csv_partial)
        record = {"inbox_file": name, "started_at": datetime.now(UTC).isoformat(timespec="seconds")}
        # The record before the CSV's last rename: once the watcher can see the CSV, the page knows it started.
        write_started(upload, record)
        os.replace(csv_partial, csv_target)
    except Exception as exc:
        _put_back(upload, moved)
        lock.unlink(missing_ok=True)
        if not isinstance(exc, OSError):
            raise
        if isinstance(exc, FileExistsError):  # mkdir: something else has the folder's name
            why = "it is not a folder"
        else:
            why = f"{exc.strerror or exc}" + (f" ({exc.filename})" if exc.filename else "")
        raise HandOverFailed(f"the drop folder {folders.inbox} could not take the upload: {why}; "
                             "nothing was started") from exc
    return record


def _put_back(upload: Staged, moved: list[tuple[Path, tuple[Path, ...]]]) -> None:
    """Undoes a hand-over that failed part way (best effort: the lock is released whatever is left)."""
    (upload.root / STARTED_FILE).unlink(missing_ok=True)
    for source, places in reversed(moved):
        for place in places:
            try:
                if place.is_file():
                    if source.exists():  # a copy across file systems stopped half way: the source is whole
                        place.unlink()
                    else:
                        shutil.move(place, source)
            except OSError:
                continue


def write_started(upload: Staged, record: dict[str, Any]) -> None:
    """The start record, with what the page learnt since (the watcher run it started, or why it could not)."""
    _write_json(upload.root / STARTED_FILE, record)


def watcher_outcome(folders: inbox.Folders, name: str) -> dict[str, Any] | None:
    """The watcher's reason file for the inbox file `name` (processed/ or failed/), if it decided yet."""
    upload_id = Path(name).stem.rsplit("-", 1)[-1]
    for folder in (folders.processed, folders.failed):  # inbox.finish keeps one reason file, in one of them
        for path in folder.glob(f"*{upload_id}*.reason.json"):
            record = _read_json(path)
            if record and record.get("file") == name:
                return record
    return None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
