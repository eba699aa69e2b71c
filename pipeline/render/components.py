"""Meta's `template.components` for one recipient: the header (text, image, video, document, location), the body
and each button (quick reply payload, URL suffix, copy-code coupon, flow token; a phone-number button takes
nothing at send time), from the rendered params (`header`, `body`, `buttons`) and the spec's fixed parts.

Kinds Meta's OpenAPI spec lags behind (copy_code, flow, location) are shaped as Meta's own examples and template
reference show them; the sandbox's schema deviations (pipeline/sandbox/schema.py) say where each comes from.
"""

from __future__ import annotations

import json
from typing import Any

from pipeline.spec import ButtonSpec, TemplateSpec


def media_header(template: TemplateSpec, value: str) -> dict[str, Any]:
    """Meta's header component for a media header: `{"type": "image", "image": {"link": ...}}` (or `id`)."""
    media = template.header_media
    assert media is not None
    if media.format == "location":
        place: dict[str, Any] = {"latitude": str(media.latitude), "longitude": str(media.longitude)}
        place.update({k: v for k, v in (("name", media.name), ("address", media.address)) if v})
        return {"type": "header", "parameters": [{"type": "location", "location": place}]}
    if media.link is None and media.id is None:
        raise ValueError(f"template {template.name}: header file {media.file} has not been uploaded")
    source: dict[str, str] = {"link": value} if media.link is not None else {"id": str(media.id)}
    if media.filename:
        source["filename"] = media.filename
    return {"type": "header", "parameters": [{"type": media.format, media.format: source}]}


def button_component(index: int, button: ButtonSpec, value: str) -> dict[str, Any] | None:
    """One button's component, or None for a phone-number button (fixed in the approved template)."""
    if button.sub_type == "phone_number":
        return None
    if button.sub_type == "quick_reply":
        parameter: dict[str, Any] = {"type": "payload", "payload": button.payload or value}
    elif button.sub_type == "copy_code":
        parameter = {"type": "coupon_code", "coupon_code": value}
    elif button.sub_type == "flow":
        action: dict[str, Any] = {"flow_token": value}
        if button.flow_action_data:
            action["flow_action_data"] = dict(button.flow_action_data)
        parameter = {"type": "action", "action": action}
    else:
        parameter = {"type": "text", "text": value}
    return {"type": "button", "sub_type": button.sub_type, "index": str(index), "parameters": [parameter]}


def build_whatsapp_components(template: TemplateSpec, params: dict[str, Any] | str) -> list[dict[str, Any]]:
    """The Meta Cloud API `template.components` array for one recipient's rendered params."""
    if isinstance(params, str):
        params = json.loads(params)
    components: list[dict[str, Any]] = []
    header = [str(v) for v in params.get("header") or []]
    if template.header_media is not None and (header or template.header_media.link is None):
        components.append(media_header(template, header[0] if header else ""))
    elif header:
        components.append({"type": "header", "parameters": [{"type": "text", "text": v} for v in header]})
    body = [str(v) for v in params.get("body") or []]
    if body:
        components.append({"type": "body", "parameters": [{"type": "text", "text": v} for v in body]})
    values = params.get("buttons") or []
    for index, button in enumerate(template.buttons):
        value = values[index] if index < len(values) else (button.payload or button.text or "")
        component = button_component(index, button, str(value))
        if component is not None:
            components.append(component)
    if template.cards:
        components.append(carousel(template, [str(v) for v in params.get("cards") or []]))
    return components


def carousel(template: TemplateSpec, values: list[str]) -> dict[str, Any]:
    """Meta's carousel component: one card per spec card, each with its media header, body and buttons, from
    the flattened per-recipient values (TemplateSpec.card_parts order)."""
    taken = iter(values)
    cards: list[dict[str, Any]] = []
    for i, card in enumerate(template.cards):
        media = card.header_media
        source = {"link": next(taken)} if media.link is not None else {"id": str(media.id)}
        parts: list[dict[str, Any]] = [{"type": "header", "parameters": [{"type": media.format,
                                                                         media.format: source}]}]
        body = [next(taken) for _ in card.body]
        if body:
            parts.append({"type": "body", "parameters": [{"type": "text", "text": v} for v in body]})
        for k, button in enumerate(card.buttons):
            component = button_component(k, button, next(taken))
            if component is not None:
                parts.append(component)
        cards.append({"card_index": i, "components": parts})
    return {"type": "carousel", "cards": cards}
