"""The audience drop folder: which uploads are ready, the campaign each becomes, and where each file ends up.

An upload is `audiences/inbox/<name>.csv`, with an optional sidecar spec `<name>.yaml` (else the default
spec). The watcher claims it by an atomic rename (two watchers never take the same file), gives it a
campaign id of its own (file name + UTC time), and finally moves it to `processed/` (campaign started) or
`failed/`, with `<campaign_id>.reason.json` beside it saying why.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import time
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.spec import CampaignSpec, SpecError, parse_spec

SPEC_SUFFIXES = (".yaml", ".yml")
# Names an uploader uses while a file is still being written; the watcher leaves them alone.
PARTIAL_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload", ".filepart")
WORK_DIR = ".processing"

Outcome = Literal["started", "failed"]


@dataclass(frozen=True)
class Folders:
    inbox: Path
    processed: Path
    failed: Path

    @classmethod
    def under(cls, root: Path | str) -> Folders:
        root = Path(root)
        return cls(root / "inbox", root / "processed", root / "failed")

    @property
    def work(self) -> Path:
        return self.inbox / WORK_DIR

    def create(self) -> None:
        for folder in (self.inbox, self.processed, self.failed, self.work):
            folder.mkdir(parents=True, exist_ok=True)


@dataclass(frozen=True)
class Upload:
    """A file found in the inbox, ready to be claimed."""

    path: Path
    sidecar: Path | None  # <name>.yaml beside a CSV, if any
    supported: bool  # False: not a CSV; it goes to failed/ with the reason


@dataclass(frozen=True)
class Claimed:
    """An upload taken out of the inbox by this watcher: its campaign id and where its files are now."""

    campaign_id: str
    original_name: str
    csv: Path
    sidecar: Path | None
    received_at: datetime
    supported: bool = True


def ready_uploads(inbox: Path, *, settle_s: float = 2.0, now: float | None = None) -> list[Upload]:
    """Files in the inbox not touched for `settle_s` seconds (a file still being copied is left for the next
    round), oldest first. Dotfiles and partial-upload names are skipped; a sidecar spec is not an upload."""
    now = time.time() if now is None else now
    if not inbox.is_dir():
        return []
    entries = {p.name: p for p in inbox.iterdir() if p.is_file() and not p.name.startswith(".")}
    found: list[tuple[float, Upload]] = []
    for path in entries.values():
        suffix = path.suffix.lower()
        if suffix in PARTIAL_SUFFIXES or suffix in SPEC_SUFFIXES:
            continue
        sidecar = next((entries[path.stem + s] for s in SPEC_SUFFIXES if path.stem + s in entries), None)
        newest = max(_mtime(p) for p in (path, sidecar) if p is not None)
        if now - newest < settle_s:
            continue
        found.append((_mtime(path), Upload(path, sidecar if suffix == ".csv" else None, suffix == ".csv")))
    return [upload for _, upload in sorted(found, key=lambda item: (item[0], item[1].path.name))]


def campaign_id_for(file_name: str, at: datetime) -> str:
    """'Spring Promo (v2).csv' at 2026-11-25 14:03:07 UTC -> 'spring-promo-v2-20261125-140307'. It fits the
    spec's name pattern and Prefect's artifact keys (lowercase letters, digits, dashes)."""
    stem = Path(file_name).stem.lower()
    slug = re.sub(r"[^a-z0-9]+", "-", stem).strip("-")[:40].strip("-") or "upload"
    return f"{slug}-{at.astimezone(UTC):%Y%m%d-%H%M%S}"


def claim(upload: Upload, folders: Folders, *, at: datetime | None = None) -> Claimed | None:
    """Takes the upload out of the inbox into the watcher's work folder under a campaign id nobody used
    before. Returns None if another watcher claimed it first."""
    at = at or datetime.now(UTC)
    folders.create()
    token = folders.work / f".claim-{uuid.uuid4().hex}{upload.path.suffix.lower()}"
    try:
        os.rename(upload.path, token)  # atomic: exactly one watcher wins the file
    except FileNotFoundError:
        return None
    base = campaign_id_for(upload.path.name, at)
    suffix = ".csv" if upload.supported else upload.path.suffix.lower()
    for n in range(1, 1000):
        campaign_id = base if n == 1 else f"{base}-{n}"
        if any((folder / f"{campaign_id}.reason.json").exists() for folder in (folders.processed, folders.failed)):
            continue
        target = folders.work / f"{campaign_id}{suffix}"
        try:
            os.link(token, target)  # fails if the name is taken, even by a concurrent watcher
        except FileExistsError:
            continue
        os.unlink(token)
        break
    else:  # pragma: no cover - a thousand uploads of one name in one second
        raise RuntimeError(f"no free campaign id for {upload.path.name}")
    sidecar = None
    if upload.sidecar is not None:
        sidecar = folders.work / f"{campaign_id}.upload.yaml"
        try:
            os.rename(upload.sidecar, sidecar)
        except FileNotFoundError:
            sidecar = None
    return Claimed(campaign_id, upload.path.name, target, sidecar, at, upload.supported)


def resolve_spec(claimed: Claimed, default_spec: Path, audience: Path) -> tuple[CampaignSpec, dict[str, Any]]:
    """The campaign spec of an upload: its sidecar spec, else the default one, named after the campaign id
    and reading `audience` (a relative path is relative to the spec file's folder, see pipeline.spec).
    Raises SpecError naming the spec file."""
    source = claimed.sidecar or default_spec
    label = f"{claimed.original_name} spec ({Path(claimed.original_name).stem}.yaml)" if claimed.sidecar else str(
        default_spec)
    try:
        data = yaml.safe_load(source.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SpecError(f"{label}: cannot read campaign spec: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{label}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{label}: a campaign spec must be a YAML mapping")
    # Each upload is its own campaign, whatever name or audience the spec it borrows says.
    data = {**data, "name": claimed.campaign_id, "audience": str(audience)}
    if not data.get("uploaded_by"):  # the upload page names the uploader; a file dropped in is its owner's
        data["uploaded_by"] = file_owner(claimed.csv)
    return parse_spec(data, label), data


def file_owner(path: Path) -> str:
    """The login name of the file's owner (its uid when the system has no name for it)."""
    uid = path.stat().st_uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def finish(
    claimed: Claimed,
    folders: Folders,
    outcome: Outcome,
    *,
    reason: str | None = None,
    spec_data: dict[str, Any] | None = None,
    details: dict[str, Any] | None = None,
) -> Claimed:
    """Moves the upload (and its sidecar spec) to processed/ or failed/ and writes `<campaign_id>.reason.json`
    beside it, plus the campaign spec it runs with, `<campaign_id>.yaml` (for `campaign resume`). Calling it
    again moves everything to the other folder. Returns the upload with its files' new paths."""
    folder = folders.processed if outcome == "started" else folders.failed
    other = folders.failed if outcome == "started" else folders.processed
    folder.mkdir(parents=True, exist_ok=True)
    for stale in (f"{claimed.campaign_id}.yaml", f"{claimed.campaign_id}.reason.json"):
        (other / stale).unlink(missing_ok=True)  # a campaign that could not start after all
    csv = _move(claimed.csv, folder)
    sidecar = _move(claimed.sidecar, folder) if claimed.sidecar is not None else None
    if spec_data is not None:
        _write_atomic(folder / f"{claimed.campaign_id}.yaml", yaml.safe_dump(spec_data, sort_keys=False))
    record = {
        "file": claimed.original_name, "campaign_id": claimed.campaign_id, "outcome": outcome, "reason": reason,
        "received_at": claimed.received_at.isoformat(timespec="seconds"),
        "decided_at": datetime.now(UTC).isoformat(timespec="seconds"), **(details or {}),
    }
    _write_atomic(folder / f"{claimed.campaign_id}.reason.json", json.dumps(record, indent=2, default=str) + "\n")
    return replace(claimed, csv=csv, sidecar=sidecar)


def _move(path: Path, folder: Path) -> Path:
    target = folder / path.name
    if path != target and path.exists():
        os.replace(path, target)
    return target


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")  # vanished under us: not ready


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
