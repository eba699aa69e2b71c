"""The upload page against hostile clients, over loopback: the token is checked before the body is read (header)
or as soon as its field ends (form), and the form's fields are bounded in number and size, so a client without
the token is refused after a few KB, whatever it keeps sending."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pipeline.receipts.receiver import create_receiver_app
from pipeline.servers import serve_in_thread
from pipeline.upload.routes import UploadConfig, add_upload_routes
from tests.receipts.raw_http import answer_before_end, connect, head, read_until_closed, status_of

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "upload-token-for-hostile-tests-0123"
BOUNDARY = "hostile-boundary-1234"
MULTIPART = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


def part(name: str, value: bytes, *, filename: str | None = None, pad_header: int = 0) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    extra = f"X-Pad: {'a' * pad_header}\r\nX-Pad-2: {'a' * pad_header}\r\n" if pad_header else ""
    return f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n{extra}\r\n".encode() + value + b"\r\n"


def closing() -> bytes:
    return f"--{BOUNDARY}--\r\n".encode()


def csv(rows: int) -> bytes:
    lines = (ROOT / "audiences/sample.csv").read_text().splitlines()
    return ("\n".join(lines[: rows + 1]) + "\n").encode()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, UploadConfig]]:
    yield from _serve(tmp_path, {})


def _serve(tmp_path: Path, env: dict[str, str]) -> Iterator[tuple[str, UploadConfig]]:
    specs = tmp_path / "campaigns"
    specs.mkdir()
    shutil.copy(ROOT / "campaigns/welcome.yaml", specs)
    config = UploadConfig.from_env({"UPLOAD_TOKEN": TOKEN, **env}, specs_dir=specs,
                                   audiences_dir=tmp_path / "audiences", staging_dir=tmp_path / "staging")
    assert config is not None
    app = create_receiver_app(tmp_path / "spool", {"whatsapp_app_secret": "s"}, environ={})
    add_upload_routes(app, config)
    with serve_in_thread(app) as url:
        yield url, config


def _nothing_staged(config: UploadConfig) -> bool:
    return not config.staging_dir.exists() or not any(p.is_file() for p in config.staging_dir.rglob("*"))


def test_many_fields_without_a_token_are_refused_after_a_few(served):
    url, config = served
    fields = [part(f"f{i}", b"v" * 4000) for i in range(2000)]  # 8 MB of fields offered, never the end
    with connect(url) as sock:
        sock.sendall(head("POST", "/upload", {**MULTIPART, "Transfer-Encoding": "chunked"}))
        answer = answer_before_end(sock, fields, chunked=True)
    assert status_of(answer) == 401, answer[:200]
    assert b"enter the upload token" in answer
    assert _nothing_staged(config)


def test_a_wrong_header_token_is_refused_before_the_body_is_read(served):
    url, config = served
    with connect(url) as sock:
        sock.sendall(head("POST", "/upload", {**MULTIPART, "Content-Length": "10000000", "X-Upload-Token": "x" * 20}))
        answer, closed = read_until_closed(sock, 5)  # not a byte of the body sent
    assert status_of(answer) == 403 and closed, answer[:200]
    assert _nothing_staged(config)


def test_a_wrong_form_token_is_refused_as_soon_as_its_field_ends(served):
    url, config = served
    chunks = [part("token", b"wrong-token-0123456789"), *[part(f"f{i}", b"v" * 100) for i in range(5)]]
    with connect(url) as sock:
        sock.sendall(head("POST", "/upload", {**MULTIPART, "Transfer-Encoding": "chunked"}))
        answer = answer_before_end(sock, chunks, chunked=True)  # the body never ends: only the token can decide
    assert status_of(answer) == 403, answer[:200]


def test_part_headers_are_bounded_like_fields(served):
    url, _ = served
    # Two headers of 3,000 bytes: each within python-multipart's own line bound, together past ours.
    body = part("token", TOKEN.encode()) + part("spec", b"welcome.yaml", pad_header=3000) + closing()
    answer = httpx.post(f"{url}/upload", content=body, headers=MULTIPART)
    assert answer.status_code == 400 and "headers that are too long" in answer.text


@pytest.fixture
def tight(tmp_path: Path) -> Iterator[tuple[str, UploadConfig]]:
    yield from _serve(tmp_path, {"UPLOAD_MAX_FIELDS": "3", "UPLOAD_MAX_FIELD_BYTES": "64", "UPLOAD_MAX_MB": "2"})


def test_field_bounds_are_settings(tight):
    url, config = tight
    assert (config.max_fields, config.max_field_bytes) == (3, 64)
    token, spec = part("token", TOKEN.encode()), part("spec", b"welcome.yaml")
    big = csv(20) + b"\n".join([b"+447700900%03d,GB,Ann,Leeds,C1,yes" % (i % 1000) for i in range(40_000)]) + b"\n"
    assert 1024 * 1024 < len(big) < 2_000_000  # more than any webhook may send: the page declares its own bound
    within = token + spec + part("uploaded_by", b"n" * 64) + part("file", big, filename="a.csv") + closing()
    too_many = token + spec + part("a", b"1") + part("b", b"2") + part("file", csv(3), filename="a.csv") + closing()
    too_long = token + part("spec", b"w" * 65) + part("file", csv(3), filename="a.csv") + closing()
    answers = [httpx.post(f"{url}/upload", content=body, headers=MULTIPART, timeout=60)
               for body in (within, too_many, too_long)]
    assert answers[0].status_code == 303, answers[0].text[-500:]
    assert answers[1].status_code == 400 and "more than 3 fields" in answers[1].text
    assert answers[2].status_code == 400 and "too long" in answers[2].text


def test_bad_bound_settings_are_named():
    for name, value in (("UPLOAD_MAX_FIELDS", "0"), ("UPLOAD_MAX_FIELD_BYTES", "lots"), ("UPLOAD_MAX_MB", "-5")):
        with pytest.raises(ValueError, match=name):
            UploadConfig.from_env({"UPLOAD_TOKEN": TOKEN, name: value})
