"""Fixtures of the upload tests: the campaign specs to choose from, and the page served with them."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.helpers.upload import ROOT, FakeRuns, Page, serve_page, upload_config


@pytest.fixture
def specs(tmp_path: Path) -> Path:
    folder = tmp_path / "campaigns"
    folder.mkdir()
    shutil.copy(ROOT / "campaigns/welcome.yaml", folder)
    welcome = yaml.safe_load((ROOT / "campaigns/welcome.yaml").read_text())
    (folder / "tight-budget.yaml").write_text(yaml.safe_dump({**welcome, "budget_usd": 0.01}))
    (folder / "broken.yaml").write_text(yaml.safe_dump({**welcome, "channel": "carrier-pigeon"}))
    return folder


@pytest.fixture
def page(tmp_path: Path, specs: Path) -> Iterator[Page]:
    yield from serve_page(upload_config(tmp_path, specs, runs=FakeRuns()), tmp_path)
