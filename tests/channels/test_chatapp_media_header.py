"""Header files through Chat App: by link, each recipient's own, in TemplateParams ("header.link") through the
dispatcher and the Chat App sandbox, on single and mass sends; the sandbox refuses a media-header send without its
link or with one that is not http(s). Chat App has no media id (its SDK's send models name none, and its one upload
operation hands out Object Storage credentials for template material), so a spec giving an `id` or a local `file`
is refused in one line naming the field, before anything is sent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.channels.whatsapp_media import with_uploaded_media
from pipeline.sandbox.chatapp import create_chatapp_app
from pipeline.sandbox.whatsapp_templates import SandboxTemplate
from pipeline.servers import serve_in_thread
from pipeline.spec import SpecError, parse_spec
from pipeline.store import Store
from tests.helpers.channels import dispatch, queue
from tests.helpers.providers import (
    CHATAPP_ENV,
    CHATAPP_SPEC,
    chatapp_channel,
    chatapp_config,
    chatapp_single_and_mass,
    set_env,
)

SANDBOX_TEMPLATE = SandboxTemplate(name="promo_img", language="en", components=[
    {"type": "HEADER", "format": "IMAGE"}, {"type": "BODY", "text": "Hi {{1}}, this week's offer."}])
TEMPLATE = {"name": "promo_img", "language": "en", "category": "marketing", "text": "Hi {{ n }}",
            "body": ["{{ n }}"], "header_media": {"format": "image", "link": "{{ img }}"}}
SPEC = {"template": TEMPLATE, "variables": {"n": "first_name", "img": "image_url"}}
PHONES = ["+6591000001", "+6591000002", "+6591000003"]


@pytest.fixture(autouse=True)
def _credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, CHATAPP_ENV)


def _params(links: list[str]) -> list[str]:
    return [json.dumps({"header": [link], "body": [f"n{i}"]}) for i, link in enumerate(links)]


def test_each_recipients_header_link_reaches_the_sandbox_single_and_mass(sqlite_db: Store) -> None:
    links = [f"https://cdn.acme.test/offers/{i}.jpg" for i in range(3)]
    app = create_chatapp_app(chatapp_config(template_set=[SANDBOX_TEMPLATE]))
    with serve_in_thread(app) as url:
        chatapp_single_and_mass(sqlite_db, url, SPEC, PHONES, _params(links))
    seen = app.state.sandbox.requests
    # The single sends leave concurrently, in any order: each recipient's request carries that recipient's link.
    singles = {p["To"]: json.loads(p["TemplateParams"]) for a, p in seen if a == "SendChatappMessage"}
    assert singles == {phone.lstrip("+"): {"1": f"n{i}", "header.link": links[i]} for i, phone in enumerate(PHONES)}
    (mass_call,) = [p for a, p in seen if a == "SendChatappMassMessage"]
    assert [item["TemplateParams"]["header.link"] for item in json.loads(mass_call["SenderList"])] == links


@pytest.mark.parametrize(("params", "problem"), [
    (json.dumps({"body": ["n"]}), "TemplateParams lacks header.link."),
    (json.dumps({"header": ["ftp://cdn.acme.test/a.jpg"], "body": ["n"]}),
     "TemplateParams: header.link is not an http(s) link."),
])
def test_the_sandbox_refuses_a_media_header_send_without_a_usable_link(
        sqlite_db: Store, params: str, problem: str) -> None:
    app = create_chatapp_app(chatapp_config(template_set=[SANDBOX_TEMPLATE]))
    with serve_in_thread(app) as url:
        channel = chatapp_channel(url, **SPEC)
        queue(sqlite_db, parse_spec({**CHATAPP_SPEC, **SPEC}), channel, PHONES[:1], params=[params])
        assert dispatch(sqlite_db, channel).failed == 1
    assert sqlite_db.rows("SELECT error_code, error_detail FROM outbox") == [
        ("InvalidParameter.TemplateParams", problem)]


@pytest.mark.parametrize(("header", "field"), [
    ({"format": "image", "id": "1013859600285441"}, "template.header_media.id"),
    ({"format": "document", "file": "offer.pdf"}, "template.header_media.file"),
])
def test_a_header_by_id_or_by_local_file_is_refused_naming_the_field(
        sqlite_db: Store, tmp_path: Path, header: dict, field: str) -> None:
    spec = parse_spec({**CHATAPP_SPEC, "template": {**TEMPLATE, "header_media": header}})
    with pytest.raises(SpecError) as refused:
        chatapp_channel("http://127.0.0.1:9", template={**TEMPLATE, "header_media": header})
    message = str(refused.value)
    assert message.startswith(f"{field}: Chat App takes a header file by 'link' only") and "\n" not in message
    if "file" in header:  # the flow's upload step says the same before it would read the file or call anyone
        with pytest.raises(SpecError, match=f"^{field}: Chat App takes a header file by 'link' only"):
            with_uploaded_media(sqlite_db, spec, "c1", base_url="http://127.0.0.1:9", access_token="x")
