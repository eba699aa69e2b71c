"""A Start whose hand-over to the drop folder fails puts back what had moved, releases the upload's lock and says
on the page what failed; Start then works once the folder is fixed (review: the lock stayed and the upload could
never be started, the page said nothing)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.upload import check
from pipeline.upload.check import HandOverFailed, Staged, hand_over
from tests.helpers.upload import Page, audience, visible_text


def _staged(page: Page, checked_url: str) -> Staged:
    return Staged(page.config.staging_dir / checked_url.rsplit("/", 1)[1])


def test_a_failed_start_says_why_and_can_be_started_again(page: Page) -> None:
    folders = page.config.folders
    folders.inbox.parent.mkdir(parents=True, exist_ok=True)
    folders.inbox.write_text("not a folder")
    checked = page.upload(audience(10), name="spring.csv")
    staged = _staged(page, str(checked.url))

    failed = page.client.post(str(checked.url) + "/start")
    assert failed.status_code == 503 and "Traceback" not in failed.text
    text = visible_text(failed.text)
    assert f"Could not start: the drop folder {folders.inbox} could not take the upload: it is not a folder" in text
    assert 'id="start"' in failed.text  # the operator may try again
    assert sorted(p.name for p in staged.root.iterdir()) == ["prepared", "spec.yaml", "spring.csv", "summary.json"]
    assert folders.inbox.read_text() == "not a folder"

    folders.inbox.unlink()
    folders.inbox.mkdir()
    started = page.client.post(str(checked.url) + "/start")
    assert started.status_code == 200 and "Handed to the drop folder" in visible_text(started.text)
    name = f"spring-{staged.upload_id}"
    assert sorted(p.name for p in folders.inbox.iterdir()) == [f"{name}.csv", f"{name}.yaml"]


@pytest.mark.parametrize("failing", ["csv_move", "record", "bug"])
def test_a_hand_over_failing_part_way_puts_everything_back(
    page: Page, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    checked = page.upload(audience(5), name="spring.csv")
    staged = _staged(page, str(checked.url))
    before = sorted(p.name for p in staged.root.iterdir())
    real_move, real_replace = check.shutil.move, os.replace

    def move(source: Path, target: Path) -> object:  # the spec has gone in; the CSV does not follow
        if failing == "csv_move" and Path(source).suffix == ".csv":
            raise PermissionError(13, "Permission denied", str(target))
        return real_move(source, target)

    def replace(source: Path, target: Path) -> None:
        if Path(target).name == check.STARTED_FILE:
            if failing == "record":
                raise OSError(28, "No space left on device", str(target))
            if failing == "bug":
                raise RuntimeError("a bug of ours")
        real_replace(source, target)

    monkeypatch.setattr(check.shutil, "move", move)
    monkeypatch.setattr(check.os, "replace", replace)
    with pytest.raises(RuntimeError if failing == "bug" else HandOverFailed) as raised:
        hand_over(staged, page.config.folders)
    monkeypatch.undo()
    if failing != "bug":
        assert str(raised.value).endswith("; nothing was started") and "\n" not in str(raised.value)
    assert sorted(p.name for p in staged.root.iterdir()) == before  # no lock, no start record
    assert list(page.config.folders.inbox.iterdir()) == []  # no spec, no .part
    assert staged.started() is None
    assert hand_over(staged, page.config.folders) is not None  # and it can go now
