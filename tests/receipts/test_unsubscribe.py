"""RFC 8058 one-click unsubscribe: opaque tokens, the endpoint's answers, and the spool record that
becomes a suppression."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from pipeline.channels import unsubscribe_webhooks as uw
from pipeline.channels.email import unsubscribe_token, verify_unsubscribe_token
from pipeline.channels.email_webhooks import is_one_click
from pipeline.receipts.spool import Spool, closed_files, decode_record
from pipeline.receipts.unsubscribe import create_unsubscribe_routes
from pipeline.servers import serve_in_thread

SECRET = "unsubscribe-secret"
ADDRESS = "reader@example.com"


def test_tokens_round_trip_are_opaque_and_cannot_be_forged():
    token = unsubscribe_token(SECRET, "Reader@Example.com")
    assert token == unsubscribe_token(SECRET, ADDRESS)  # one token per address, whatever its case
    assert verify_unsubscribe_token(SECRET, token) == ADDRESS
    assert b"reader" not in base64.urlsafe_b64decode(token + "==")  # the address is not in the link
    assert verify_unsubscribe_token("another-secret", token) is None
    assert verify_unsubscribe_token(SECRET, token, channel="sms") is None
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    assert verify_unsubscribe_token(SECRET, flipped) is None
    for junk in ("", "x", "!!!!", "a" * 200):
        assert verify_unsubscribe_token(SECRET, junk) is None
    assert unsubscribe_token(SECRET, "other@example.com") != token


def test_one_click_bodies():
    assert is_one_click(b"List-Unsubscribe=One-Click", "application/x-www-form-urlencoded")
    assert is_one_click(b"List-Unsubscribe=One-Click", None)
    multipart = (b"--b\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\nOne-Click\r\n--b--\r\n")
    assert is_one_click(multipart, "multipart/form-data; boundary=b")
    assert not is_one_click(b"List-Unsubscribe=Maybe", "application/x-www-form-urlencoded")
    assert not is_one_click(b"", "application/x-www-form-urlencoded")
    assert not is_one_click(multipart.replace(b"One-Click", b"No"), "multipart/form-data; boundary=b")


@contextlib.contextmanager
def client_for(app: Starlette) -> Iterator[httpx.Client]:
    """The app on a loopback port (lifespan included), with a client that never follows redirects."""
    with serve_in_thread(app) as url, httpx.Client(base_url=url, follow_redirects=False) as client:
        yield client


def _app(stored: list[bytes]) -> Starlette:
    async def store(raw: bytes) -> None:
        stored.append(raw)

    return Starlette(routes=create_unsubscribe_routes(store, SECRET))


def test_post_one_click_unsubscribes_with_200_and_no_redirect():
    stored: list[bytes] = []
    token = unsubscribe_token(SECRET, ADDRESS)
    with client_for(_app(stored)) as client:
        answer = client.post(f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"})
    assert answer.status_code == 200 and "location" not in answer.headers
    assert "unsubscribed" in answer.text
    (record,) = stored
    assert uw.verify(record, {}, SECRET) and not uw.verify(record, {}, "another-secret")
    receipts, (inbound,) = uw.parse(record)
    assert receipts == [] and inbound.provider == "unsubscribe"
    assert (inbound.sender, inbound.text) == (ADDRESS, "UNSUBSCRIBE")


def test_get_shows_a_one_button_form_and_unsubscribes_nobody():
    stored: list[bytes] = []
    token = unsubscribe_token(SECRET, ADDRESS)
    with client_for(_app(stored)) as client:
        page = client.get(f"/unsubscribe/{token}")
    assert page.status_code == 200 and stored == []
    assert 'method="post"' in page.text and f'action="/unsubscribe/{token}"' in page.text
    assert 'name="List-Unsubscribe" value="One-Click"' in page.text and ADDRESS in page.text


def test_invalid_tokens_and_wrong_bodies_are_refused():
    stored: list[bytes] = []
    token = unsubscribe_token(SECRET, ADDRESS)
    forged = unsubscribe_token("guessed-secret", ADDRESS)
    with client_for(_app(stored)) as client:
        assert client.post(f"/unsubscribe/{forged}", data={"List-Unsubscribe": "One-Click"}).status_code == 404
        assert client.get(f"/unsubscribe/{forged}").status_code == 404
        assert client.post(f"/unsubscribe/{token}", data={"unsubscribe": "yes"}).status_code == 400
        assert client.post(f"/unsubscribe/{token}", content=b"x" * 20_000).status_code == 413
    assert stored == []
    with pytest.raises(ValueError):
        create_unsubscribe_routes(lambda raw: None, "")  # type: ignore[arg-type, return-value]


def test_spool_failure_is_a_503_so_the_click_can_be_retried():
    async def broken(raw: bytes) -> None:
        raise OSError("disk full")

    token = unsubscribe_token(SECRET, ADDRESS)
    with client_for(Starlette(routes=create_unsubscribe_routes(broken, SECRET))) as client:
        assert client.post(f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"}).status_code == 503


def test_records_go_to_the_receivers_spool_as_provider_unsubscribe(tmp_path: Path):
    spool = Spool(tmp_path / "spool")

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        spool.start()
        yield
        await spool.close()

    app = Starlette(routes=create_unsubscribe_routes(spool, SECRET), lifespan=lifespan)
    token = unsubscribe_token(SECRET, ADDRESS)
    multipart = (b"--b\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\nOne-Click\r\n--b--\r\n")
    with client_for(app) as client:
        answer = client.post(f"/unsubscribe/{token}", content=multipart,
                             headers={"content-type": "multipart/form-data; boundary=b"})
        assert answer.status_code == 200
    lines = [line for path in closed_files(tmp_path / "spool") for line in path.read_bytes().splitlines() if line]
    (line,) = lines
    provider, _, body = decode_record(line)
    assert provider == uw.PROVIDER
    assert [m.sender for m in uw.parse(body)[1]] == [ADDRESS]


def test_malformed_records_raise():
    for bad in (b"nope", b"[]", b'{"object":"unsubscribe","channel":"email"}'):
        with pytest.raises(ValueError):
            uw.parse(bad)
        assert not uw.verify(bad, {}, SECRET)
