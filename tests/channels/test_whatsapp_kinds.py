"""WhatsApp template kinds beyond text: image, video and document headers (by link, per recipient from a
column on the fast render path, or by media id), with URL-button coupons per recipient, rendered, built and
sent through the real dispatcher to the sandbox, which validates every request against Meta's OpenAPI spec."""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path

import polars as pl
import pytest

from pipeline.channels.base import Outgoing
from pipeline.channels.chatapp_params import check_media, template_params
from pipeline.channels.whatsapp import WhatsAppChannel
from pipeline.channels.whatsapp_media import with_uploaded_media
from pipeline.costs.costing import estimate_cost, load_prices
from pipeline.dispatch.outbox import enqueue_messages, register_campaign
from pipeline.render.templates import render_messages
from pipeline.sandbox.schema import validate_message
from pipeline.sandbox.whatsapp import create_app
from pipeline.servers import serve_in_thread
from pipeline.spec import SpecError, TemplateSpec, parse_spec
from pipeline.store import Store
from tests.helpers.channels import dispatch
from tests.helpers.whatsapp import SPEC, TOKEN, config, running
from tests.helpers.whatsapp import channel as whatsapp_channel

BUTTONS = [{"sub_type": "url", "text": "{{ coupon }}"}, {"sub_type": "quick_reply", "payload": "STOP_PROMOS",
                                                         "opt_out": True}]
KINDS = {
    "image by link from a column": {"header_media": {"format": "image", "link": "{{ image }}"}},
    "video by link": {"header_media": {"format": "video", "link": "https://cdn.acme.test/v/{{ coupon }}.mp4"}},
    "document by media id": {"header_media": {"format": "document", "id": "1013859600285441",
                                              "filename": "offer.pdf"}},
    "location": {"header_media": {"format": "location", "latitude": 51.5072, "longitude": -0.1276,
                                  "name": "Acme London", "address": "1 Acme St"}},
}
AUDIENCE = pl.DataFrame({"row_number": [2, 3], "first_name": ["Ann", "Bo"], "coupon": ["C-1", "C-2"],
                         "image": ["https://cdn.acme.test/a.jpg", "https://cdn.acme.test/b.jpg"],
                         "phone_e164": ["+447700900001", "+447700900002"], "region": ["GB", "GB"],
                         "number_type": ["mobile", "mobile"]})
VARIABLES = {"first_name": "first_name", "coupon": "coupon", "image": "image"}


def template(kind: str) -> TemplateSpec:
    return TemplateSpec.model_validate({"name": "promo", "language": "en_US", "category": "marketing",
                                        "text": "Hi {{ first_name }}", "body": ["{{ first_name }}"],
                                        "buttons": BUTTONS, **KINDS[kind]})


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_header_kind_renders_per_recipient_and_is_valid_to_metas_schema(kind: str) -> None:
    spec = template(kind)
    rendered, rejects = render_messages(AUDIENCE, spec, VARIABLES)
    assert rejects.is_empty()
    params = [json.loads(p) for p in rendered["params_json"]]
    payloads = [whatsapp_channel().build_payload(Outgoing(message_id=f"m{i}", to=phone, params=p, template=spec))
                for i, (phone, p) in enumerate(zip(AUDIENCE["phone_e164"], params, strict=True))]
    for payload in payloads:
        assert validate_message(payload) == []
    header = payloads[1]["template"]["components"][0]
    media = spec.header_media
    assert media is not None and header["type"] == "header"
    expected = {"image": {"link": "https://cdn.acme.test/b.jpg"}, "video": {"link": "https://cdn.acme.test/v/C-2.mp4"},
                "document": {"id": "1013859600285441", "filename": "offer.pdf"},
                "location": {"latitude": "51.5072", "longitude": "-0.1276", "name": "Acme London",
                             "address": "1 Acme St"}}[media.format]
    assert header["parameters"] == [{"type": media.format, media.format: expected}]
    # The coupon is each recipient's own, in the URL button's suffix; the opt-out quick reply carries its payload.
    assert payloads[1]["template"]["components"][2]["parameters"] == [{"type": "text", "text": "C-2"}]
    # Through Chat App the same values travel in TemplateParams.
    chatapp = template_params(spec, params[1])
    assert chatapp["button.0"] == "C-2"
    if media.link is not None:  # a file by link; Chat App has no media id (its send models name none)
        assert chatapp["header.link"] == expected["link"]
    elif media.id is not None:
        with pytest.raises(SpecError, match=r"^template\.header_media\.id: Chat App takes a header file by 'link'"):
            check_media(spec)


def test_a_media_header_from_a_plain_column_takes_the_fast_path() -> None:
    spec = template("image by link from a column")
    rendered, _ = render_messages(AUDIENCE, spec, VARIABLES)
    # The fast path writes params_json as its own JSON text, with spaces after separators.
    assert rendered["params_json"][0] == ('{"header": ["https://cdn.acme.test/a.jpg"], "body": ["Ann"], '
                                         '"buttons": ["C-1", "STOP_PROMOS"]}')


def test_the_spec_refuses_a_header_that_is_both_or_neither() -> None:
    with pytest.raises(ValueError, match="exactly one of 'link', 'id' and 'file'"):
        TemplateSpec.model_validate({"name": "p", "language": "en", "category": "utility", "text": "x",
                                     "header_media": {"format": "image"}})
    with pytest.raises(SpecError, match="not both"):
        parse_spec({**SPEC, "template": {**SPEC["template"], "header": ["x"],
                                         "header_media": {"format": "image", "link": "https://a.test/x.png"}}})


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_kind_goes_through_the_dispatcher_to_the_sandbox(sqlite_db: Store, kind: str) -> None:
    spec = parse_spec({**SPEC, "senders": [], "template": template(kind).model_dump(exclude_none=True)})
    rendered, _ = render_messages(AUDIENCE, spec.template, VARIABLES)
    register_campaign(sqlite_db, spec, "t")
    with running(config(fail_rate=0.0)) as client:
        channel = WhatsAppChannel(base_url=str(client.base_url), api_version="v23.0", phone_number_id="111",
                                  access_token=TOKEN)
        enqueue_messages(sqlite_db, spec, "t", channel, rendered.with_columns(pl.lit("Hi").alias("text")))
        result = dispatch(sqlite_db, channel)
        stats = client.get("/_sandbox/stats").json()
    assert result.sent == 2 and result.failed == 0
    assert stats["accepted"] == 2 and not stats.get("rejected")


BUTTON_KINDS = [
    {"sub_type": "quick_reply", "payload": "STOP_PROMOS", "opt_out": True},
    {"sub_type": "url", "text": "{{ coupon }}"},
    {"sub_type": "copy_code", "text": "{{ coupon }}"},
    {"sub_type": "flow", "text": "flow-{{ coupon }}", "flow_action_data": {"screen": "OFFER"}},
    {"sub_type": "phone_number"},
]


def test_every_button_kind_is_valid_to_metas_schema_with_per_recipient_values() -> None:
    spec = TemplateSpec.model_validate({"name": "promo", "language": "en_US", "category": "marketing",
                                        "text": "Hi", "body": ["{{ first_name }}"], "buttons": BUTTON_KINDS})
    rendered, rejects = render_messages(AUDIENCE, spec, VARIABLES)
    assert rejects.is_empty()
    params = json.loads(rendered["params_json"][1])
    payload = whatsapp_channel().build_payload(Outgoing(message_id="m", to="+447700900002", params=params,
                                                        template=spec))
    assert validate_message(payload) == []
    buttons = [c for c in payload["template"]["components"] if c["type"] == "button"]
    assert [(b["sub_type"], b["index"], b["parameters"]) for b in buttons] == [
        ("quick_reply", "0", [{"type": "payload", "payload": "STOP_PROMOS"}]),
        ("url", "1", [{"type": "text", "text": "C-2"}]),
        ("copy_code", "2", [{"type": "coupon_code", "coupon_code": "C-2"}]),
        ("flow", "3", [{"type": "action",
                        "action": {"flow_token": "flow-C-2", "flow_action_data": {"screen": "OFFER"}}}]),
    ]  # the phone-number button is fixed in the template: nothing is sent for it
    # The schema still refuses what Meta refuses: a coupon over 15 characters.
    buttons[2]["parameters"][0]["coupon_code"] = "C" * 16
    assert validate_message(payload)


def test_a_header_file_is_uploaded_once_per_campaign_and_its_id_reused(sqlite_db: Store, tmp_path: Path) -> None:
    picture = tmp_path / "offer.png"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 1000)
    with_file = {**template("image by link from a column").model_dump(exclude_none=True),
                 "header_media": {"format": "image", "file": str(picture)}}
    spec = parse_spec({**SPEC, "senders": [], "template": with_file})
    rendered, _ = render_messages(AUDIENCE, spec.template, VARIABLES)
    app = create_app(config(fail_rate=0.0))
    with serve_in_thread(app) as url:
        first = with_uploaded_media(sqlite_db, spec, "t", base_url=url, access_token=TOKEN)
        again = with_uploaded_media(sqlite_db, spec, "t", base_url=url, access_token=TOKEN)  # a resumed queue
        assert first.template.header_media.id == again.template.header_media.id  # type: ignore[union-attr]
        assert len(app.state.media.uploads) == 1
        register_campaign(sqlite_db, first, "t")
        channel = WhatsAppChannel(base_url=url, api_version="v23.0", phone_number_id="111", access_token=TOKEN)
        enqueue_messages(sqlite_db, first, "t", channel, rendered.with_columns(pl.lit("Hi").alias("text")))
        assert dispatch(sqlite_db, channel).sent == 2
    media_id = first.template.header_media.id  # type: ignore[union-attr]
    for (payload,) in sqlite_db.rows("SELECT payload_json FROM outbox"):
        header = json.loads(payload)["template"]["components"][0]
        assert header["parameters"] == [{"type": "image", "image": {"id": media_id}}]
    # Another campaign uploads its own copy.
    with serve_in_thread(app) as url:
        with_uploaded_media(sqlite_db, spec, "t2", base_url=url, access_token=TOKEN)
    assert len(app.state.media.uploads) == 2


def test_a_header_file_wrong_in_type_or_size_stops_before_any_call(sqlite_db: Store, tmp_path: Path) -> None:
    text = tmp_path / "offer.txt"
    text.write_text("not a picture")
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff" * (5 * 1024 * 1024 + 1))
    for path, problem in ((text, "type text/plain is not one WhatsApp takes for a image"),
                          (big, "5,242,881 bytes, WhatsApp takes at most 5,242,880"),
                          (tmp_path / "missing.png", "cannot read")):
        spec = parse_spec({**SPEC, "template": {**SPEC["template"],
                                                "header_media": {"format": "image", "file": str(path)}}})
        with pytest.raises(SpecError, match=re.escape(problem)):
            with_uploaded_media(sqlite_db, spec, "t", base_url="http://127.0.0.1:9", access_token=TOKEN)


CAROUSEL = {"name": "spring_cards", "language": "en_US", "category": "marketing", "text": "Hi {{ first_name }}",
            "body": ["{{ first_name }}"], "cards": [
                {"header_media": {"format": "image", "link": "{{ image }}"}, "body": ["{{ coupon }}"],
                 "buttons": [{"sub_type": "url", "text": "{{ coupon }}"},
                             {"sub_type": "quick_reply", "payload": "STOP_PROMOS", "opt_out": True}]},
                {"header_media": {"format": "video", "id": "1013859600285442"}, "body": ["{{ first_name }}"],
                 "buttons": [{"sub_type": "url", "text": "more/{{ coupon }}"}]}]}


def test_a_carousel_renders_per_card_per_recipient_and_is_valid_to_metas_schema(sqlite_db: Store) -> None:
    spec = TemplateSpec.model_validate(CAROUSEL)
    rendered, rejects = render_messages(AUDIENCE, spec, VARIABLES)
    assert rejects.is_empty()
    params = json.loads(rendered["params_json"][1])
    assert params["cards"] == ["https://cdn.acme.test/b.jpg", "C-2", "C-2", "STOP_PROMOS", "Bo", "more/C-2"]
    payload = whatsapp_channel().build_payload(Outgoing(message_id="m", to="+447700900002", params=params,
                                                        template=spec))
    assert validate_message(payload) == []
    carousel = payload["template"]["components"][-1]
    assert [c["card_index"] for c in carousel["cards"]] == [0, 1]
    assert carousel["cards"][0]["components"][0]["parameters"] == [
        {"type": "image", "image": {"link": "https://cdn.acme.test/b.jpg"}}]
    assert carousel["cards"][1]["components"][2]["parameters"] == [{"type": "text", "text": "more/C-2"}]
    # Meta's limits hold: a carousel of 11 cards is refused by the schema.
    carousel["cards"] = carousel["cards"] * 6
    assert validate_message(payload)
    with pytest.raises(ValueError, match="2 to 10 cards"):
        TemplateSpec.model_validate({**CAROUSEL, "cards": CAROUSEL["cards"][:1]})
    # Through Chat App the cards' values travel in TemplateParams (a card's file by link: Chat App has no media id).
    values = template_params(spec, params)
    assert (values["card.0.header.link"], values["card.0.1"], values["card.1.button.0"]) \
        == ("https://cdn.acme.test/b.jpg", "C-2", "more/C-2")
    with pytest.raises(SpecError, match=r"^template\.cards\.1\.header_media\.id: Chat App takes a header file by"):
        check_media(spec)
    # Through the dispatcher to the sandbox.
    full = parse_spec({**SPEC, "senders": [], "template": CAROUSEL})
    register_campaign(sqlite_db, full, "t")
    with running(config(fail_rate=0.0)) as client:
        channel = WhatsAppChannel(base_url=str(client.base_url), api_version="v23.0", phone_number_id="111",
                                  access_token=TOKEN)
        enqueue_messages(sqlite_db, full, "t", channel, rendered.with_columns(pl.lit("Hi").alias("text")))
        assert dispatch(sqlite_db, channel).sent == 2
        assert client.get("/_sandbox/stats").json()["accepted"] == 2


def test_media_and_carousel_templates_are_priced_like_any_template_of_their_category(sqlite_db: Store) -> None:
    load_prices(sqlite_db)
    plain = {**SPEC["template"], "body": ["{{ first_name }}"], "text": "Hi {{ first_name }}"}
    kinds = {"plain": plain, "media": template("image by link from a column").model_dump(exclude_none=True),
             "carousel": CAROUSEL}
    totals = {}
    for name, body in kinds.items():
        spec = parse_spec({**SPEC, "senders": [], "template": body})
        rendered, _ = render_messages(AUDIENCE, spec.template, VARIABLES)
        register_campaign(sqlite_db, spec, name)
        enqueue_messages(sqlite_db, spec, name, whatsapp_channel(), rendered)
        totals[name] = estimate_cost(sqlite_db, name, on=date(2026, 10, 20), record=False).total_usd
    assert totals["plain"] > 0 and totals["media"] == totals["plain"] == totals["carousel"]
