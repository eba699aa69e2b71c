"""The webhook receiver over real HTTP (pipeline.receipts.receiver): handshake, signatures, spooling, ingest (into a
SQLite store: the receiver is the subject; tests/receipts/test_receipts.py ingests on both stores)."""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from pipeline import store
from pipeline.channels.whatsapp_webhooks import sign
from pipeline.receipts.ingest import ingest_spool
from pipeline.receipts.receiver import create_receiver_app, main, secrets_from_env, server_config
from pipeline.receipts.spool import closed_files, decode_record
from pipeline.servers import serve_in_thread
from tests.helpers.receipts import add_messages
from tests.helpers.waiting import wait_for

SECRETS = {"whatsapp_app_secret": "s3cret-app", "whatsapp_verify_token": "verify-me"}
URL = "/webhooks/whatsapp"


def status_body(n: int, status: str = "delivered") -> bytes:
    value = {"messaging_product": "whatsapp", "statuses": [{
        "id": f"wamid.{n}", "status": status, "timestamp": str(1750030000 + n),
        "recipient_id": "16505551234", "biz_opaque_callback_data": f"msg-{n}",
    }]}
    doc = {"object": "whatsapp_business_account", "entry": [{"id": "W", "changes": [
        {"field": "messages", "value": value}]}]}
    return json.dumps(doc).encode()


def signed(body: bytes, secret: str = SECRETS["whatsapp_app_secret"]) -> dict[str, str]:
    return {"X-Hub-Signature-256": sign(body, secret), "Content-Type": "application/json"}


def queued(db: store.Store, n: int) -> None:
    """Outbox messages msg-0 .. msg-<n-1>, which status_body names (receipts naming none are kept apart)."""
    add_messages(db, *(f"msg-{i}" for i in range(n)))


def spooled_lines(spool_dir: Path) -> int:
    return sum(len(p.read_bytes().splitlines()) for p in closed_files(spool_dir))


def test_handshake(tmp_path: Path) -> None:
    app = create_receiver_app(tmp_path, SECRETS)
    with serve_in_thread(app) as base:
        ok = httpx.get(base + URL, params={
            "hub.mode": "subscribe", "hub.verify_token": "verify-me", "hub.challenge": "1158201444"})
        assert ok.status_code == 200
        assert ok.text == "1158201444"
        assert ok.headers["content-type"].startswith("text/plain")
        wrong = httpx.get(base + URL, params={
            "hub.mode": "subscribe", "hub.verify_token": "guess", "hub.challenge": "1158201444"})
        assert wrong.status_code == 403 and "1158201444" not in wrong.text
        bad_mode = httpx.get(base + URL, params={
            "hub.mode": "unsubscribe", "hub.verify_token": "verify-me", "hub.challenge": "1"})
        assert bad_mode.status_code == 403
        assert httpx.get(base + URL).status_code == 403
        health = httpx.get(base + "/healthz")
        assert health.status_code == 200 and health.json()["status"] == "ok"


def test_signed_post_is_spooled_and_ingested_forged_ones_are_not(sqlite_db: store.Store, tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    app = create_receiver_app(spool_dir, SECRETS)
    good, forged = status_body(1), status_body(2)
    with serve_in_thread(app) as base:
        r = httpx.post(base + URL, content=good, headers=signed(good))
        assert r.status_code == 200
        # Forged: signed with another secret; tampered: good signature over other bytes; unsigned.
        assert httpx.post(base + URL, content=forged, headers=signed(forged, "attacker")).status_code == 401
        assert httpx.post(base + URL, content=forged, headers=signed(good)).status_code == 401
        assert httpx.post(base + URL, content=forged,
                          headers={"Content-Type": "application/json"}).status_code == 401
        assert app.state.spool.appends == 1  # refused bodies never reached the spool
    # Shutdown (lifespan) closed the open file, so it is ready for ingest.
    assert not list(spool_dir.glob("*.open"))
    assert spooled_lines(spool_dir) == 1
    queued(sqlite_db, 2)
    result = ingest_spool(sqlite_db, spool_dir)
    assert (result.files, result.events_added, result.quarantined) == (1, 1, 0)
    rows = [tuple(r) for r in sqlite_db.rows("SELECT provider_message_id, message_id, status FROM events")]
    assert rows == [("wamid.1", "msg-1", "delivered")]


def test_concurrent_posts_share_fsyncs(
    sqlite_db: store.Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Group commit over real HTTP, independent of timing: the first write is held until all `n` webhooks have
    reached the spool, so they take exactly two writes + fsyncs, and each is answered 200 only after its own."""
    n = 200
    spool_dir = tmp_path / "spool"
    app = create_receiver_app(spool_dir, SECRETS)
    spool = app.state.spool
    bodies = [status_body(i) for i in range(n)]
    gate, batch_sizes, write = threading.Event(), [], spool._write_batch

    def held_first_write(data: bytes) -> None:
        batch_sizes.append(data.count(b"\n"))
        if len(batch_sizes) == 1:
            assert gate.wait(30), "the test never released the first write"
        write(data)

    monkeypatch.setattr(spool, "_write_batch", held_first_write)

    async def blast(base: str) -> list[int]:
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
            responses = await asyncio.gather(
                *(client.post(URL, content=b, headers=signed(b)) for b in bodies))
        return [r.status_code for r in responses]

    with serve_in_thread(app) as base, ThreadPoolExecutor(1) as pool:
        posting = pool.submit(asyncio.run, blast(base))
        wait_for(lambda: spool.appends == n, timeout_s=60, what=f"all {n} webhooks to reach the spool")
        assert not posting.done() and spool.writes == 0  # nobody has an answer: nothing is on disk yet
        gate.set()
        codes = posting.result(timeout=60)
    assert codes == [200] * n
    assert spool.writes == 2 and sum(batch_sizes) == n, (batch_sizes, spool.stats())
    assert spool.fsyncs == spool.writes + spool.rotations, spool.stats()  # a rotation closes with its own
    queued(sqlite_db, n)
    assert ingest_spool(sqlite_db, spool_dir).events_added == n
    assert sqlite_db.scalar("SELECT count(DISTINCT provider_message_id) FROM events") == n


def test_oversized_body_is_refused(tmp_path: Path) -> None:
    app = create_receiver_app(tmp_path, SECRETS)
    body = b"{" + b" " * (1024 * 1024 + 10) + b"}"
    with serve_in_thread(app) as base:
        assert httpx.post(base + URL, content=body, headers=signed(body)).status_code == 413
    assert spooled_lines(tmp_path) == 0


def test_app_requires_an_app_secret(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        create_receiver_app(tmp_path, {"whatsapp_verify_token": "x"})


def test_main_refuses_to_start_without_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("WHATSAPP_APP_SECRET", raising=False)
    monkeypatch.setenv("WHATSAPP_VERIFY_TOKEN", "tok-value")
    assert main(["--spool-dir", str(tmp_path), "--port", "8802"]) == 2
    err = capsys.readouterr().err
    assert "WHATSAPP_APP_SECRET" in err and "tok-value" not in err
    assert secrets_from_env({"WHATSAPP_APP_SECRET": "a", "WHATSAPP_VERIFY_TOKEN": "b"}) == {
        "whatsapp_app_secret": "a", "whatsapp_verify_token": "b"}


def test_the_spooled_record_holds_the_body_byte_for_byte(tmp_path: Path) -> None:
    body = b'{"object":"whatsapp_business_account", "entry": [], "note": "\xe9\x80\x80\xe8\xae\xa2 \\u00e9"}'
    app = create_receiver_app(tmp_path, SECRETS)
    with serve_in_thread(app) as base:
        assert httpx.post(base + URL, content=body, headers=signed(body)).status_code == 200
    (line,) = b"".join(p.read_bytes() for p in closed_files(tmp_path)).splitlines()
    provider, received_at, raw = decode_record(line)
    assert (provider, raw) == ("whatsapp", body)
    assert received_at is not None and received_at.tzinfo is not None


def test_streamed_oversized_body_other_methods_and_paths(tmp_path: Path) -> None:
    app = create_receiver_app(tmp_path, SECRETS)

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(40):
            yield b" " * 32768

    with serve_in_thread(app) as base:
        assert httpx.post(base + URL, content=chunks(), headers=signed(b"")).status_code == 413
        assert httpx.put(base + URL, content=b"{}").status_code == 405
        assert httpx.post(base + "/webhooks/other", content=b"{}").status_code == 404
        assert app.state.spool.appends == 0
        assert any(getattr(r, "path", None) == "/healthz" for r in app.routes)  # Starlette's attributes
    assert spooled_lines(tmp_path) == 0


def test_no_200_when_the_spool_cannot_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_receiver_app(tmp_path, SECRETS)
    body = status_body(1)

    async def disk_full(record: bytes) -> None:
        raise OSError(28, "No space left on device")

    with serve_in_thread(app) as base:
        monkeypatch.setattr(app.state.spool, "append", disk_full)
        response = httpx.post(base + URL, content=body, headers=signed(body))
    assert response.status_code == 503  # Meta retries; nothing was acknowledged


def test_server_config_is_loopback_only(tmp_path: Path) -> None:
    app = create_receiver_app(tmp_path, SECRETS)
    config = server_config(app, "127.0.0.1", 0)
    # httptools, with the deadlines of pipeline.servers on top
    assert issubclass(config.http, HttpToolsProtocol) and config.proxy_headers is False
    with pytest.raises(ValueError):
        server_config(app, "0.0.0.0", 8802)
