"""The upload page for tests: served on the receiver's app over loopback, with a stand-in for Prefect's runs,
and a client that uploads with the token (tests/upload/conftest.py makes it the `page` fixture)."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path

import httpx

from pipeline.receipts.receiver import create_receiver_app
from pipeline.servers import serve_in_thread
from pipeline.upload.routes import UploadConfig, add_upload_routes

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "upload-token-for-tests-0123456789"
UPLOADER = "Uma Uploader"  # the name the form asks for (the spec's uploaded_by)
HEADER = "phone,country,first_name,city,coupon,opt_in"


def audience(rows: int, *extra: str) -> str:
    """The first `rows` rows of the sample audience (and `extra` lines), as uploaded."""
    lines = (ROOT / "audiences/sample.csv").read_text().splitlines()
    return "\n".join([*lines[: rows + 1], *extra]) + "\n"


def visible_text(page: str) -> str:
    """What a reader sees: tags dropped, entities decoded, white space collapsed."""
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page)))


class FakeRuns:
    """pipeline.upload.routes.Runs without Prefect: records the watcher starts, answers states set by the test."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.started: list[Path] = []
        self.states: dict[str, tuple[str, bool]] = {}

    def start_watcher(self, audiences_dir: Path) -> str:
        if self.fail:
            raise RuntimeError("Deployment 'inbox-watcher/audience-inbox' not found")
        self.started.append(audiences_dir)
        self.states["watcher-1"] = ("Running", False)
        return "watcher-1"

    def state(self, flow_run_id: str) -> tuple[str, bool] | None:
        return self.states.get(flow_run_id)

    def url(self, flow_run_id: str) -> str:
        return f"http://127.0.0.1:4200/runs/flow-run/{flow_run_id}"


class Page:
    def __init__(self, url: str, config: UploadConfig) -> None:
        self.url, self.config = url, config
        self.client = httpx.Client(base_url=url, follow_redirects=True, timeout=30)

    def upload(self, content: str | bytes, *, name: str = "spring.csv", spec: str = "welcome.yaml",
               token: str | None = TOKEN, uploaded_by: str = UPLOADER) -> httpx.Response:
        data = {"token": token} if token is not None else {}
        return self.client.post("/upload", data={**data, "uploaded_by": uploaded_by, "spec": spec},
                                files={"file": (name, content, "text/csv")})


def upload_config(tmp_path: Path, specs: Path, **changes: object) -> UploadConfig:
    return UploadConfig(token=TOKEN, specs_dir=specs, audiences_dir=tmp_path / "audiences",
                        staging_dir=tmp_path / "staging", **changes)  # type: ignore[arg-type]


def serve_page(config: UploadConfig, tmp_path: Path) -> Iterator[Page]:
    """The page on a receiver app on loopback, for as long as the caller iterates (a fixture yields from it)."""
    app = create_receiver_app(tmp_path / "spool", {"whatsapp_app_secret": "s"})
    add_upload_routes(app, config)
    with serve_in_thread(app) as url:
        page = Page(url, config)
        yield page
        page.client.close()
