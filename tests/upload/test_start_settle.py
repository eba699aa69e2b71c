"""Start waits out the drop folder watcher's settle time for the newer of the staged CSV and its spec: the watcher
only takes a CSV once both have been quiet for it (pipeline/upload/inbox.py ready_uploads), and the spec is copied
into staging after the file has arrived, so on a loaded machine the CSV alone was old enough first."""

from __future__ import annotations

import os
import time

from pipeline.upload import inbox
from pipeline.upload.check import Staged
from tests.helpers.upload import Page, audience


def test_start_waits_until_the_watcher_takes_the_file_with_its_spec(page: Page) -> None:
    checked = page.upload(audience(10), name="spring.csv")
    upload_id = str(checked.url).rsplit("/", 1)[1]
    staged = Staged(page.config.staging_dir / upload_id)
    assert staged.csv is not None
    # The file arrived long ago, its spec only now (the spec is copied once the upload is in).
    then = time.time() - 10
    os.utime(staged.csv, (then, then))
    assert page.client.post(str(checked.url) + "/start").status_code == 200
    ready = inbox.ready_uploads(page.config.folders.inbox)
    assert [(u.path.name, u.sidecar is not None) for u in ready] == [(f"spring-{upload_id}.csv", True)]


