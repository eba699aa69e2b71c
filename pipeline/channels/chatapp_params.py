"""What a Chat App send carries beyond its addressing (docs/providers.md §3.2): a recipient's template values as
TemplateParams (body, header, buttons, carousel cards), a flow button's FlowAction, and the native fallback
settings from `provider.options`. Parameter names are those of Alibaba's SDK models (alibabacloud-cams20200606)."""

from __future__ import annotations

from typing import Any

from pipeline.spec import SpecError, TemplateSpec

# A copy-code button's variable when the spec names none: Alibaba's SDK documents the button's coupon as a template
# variable, "such as $(couponCode)", whose value is given when sending (CreateChatappTemplate's CouponCode).
DEFAULT_COUPON_VARIABLE = "couponCode"
# Chat App's native fallback: policy id, text, seconds without a delivery (60-43200), rule.
FALLBACK_RULES = frozenset({"undelivered", "sentFailed"})


def template_params(template: TemplateSpec, params: dict[str, list[str]]) -> dict[str, str]:
    """TemplateParams of one recipient: body positions "1".."n" (as before), the header's text variable as
    "header.1" (a media header's file as "header.link", a document's name as "header.fileName"), a URL button's
    dynamic suffix as "button.<index>"; a copy-code button's coupon under the variable its Chat App template declares
    (`variable`, default "couponCode": Alibaba's SDK documents the coupon as a `$(name)` variable given at send
    time); a flow button's token travels in FlowAction instead. Alibaba's SDK types TemplateParams as a map of
    string to string (Dict[str, str]) and names no keys beyond the template's own variables; the header and URL
    button names are the project's (docs/providers.md §3.2), checked by the sandbox against the template."""
    values = {str(i): v for i, v in enumerate(params.get("body") or [], start=1)}
    media = template.header_media
    if media is not None and media.format != "location":  # a media header's file, by link (check_media)
        if params.get("header"):
            values["header.link"] = params["header"][0]
        if media.filename:
            values["header.fileName"] = media.filename
    else:
        values.update({f"header.{i}": v for i, v in enumerate(params.get("header") or [], start=1)})
    buttons = params.get("buttons") or []
    for index, button in enumerate(template.buttons):
        if button.sub_type == "url" and index < len(buttons):
            values[f"button.{index}"] = buttons[index]
        elif button.sub_type == "copy_code" and index < len(buttons):
            values[button.variable or DEFAULT_COUPON_VARIABLE] = buttons[index]
    # A carousel's values: "card.<i>.header.link", "card.<i>.<j>" and "card.<i>.button.<k>" (its URL suffixes).
    cards = iter(params.get("cards") or [])
    for i, card in enumerate(template.cards):
        if card.header_media.link is not None:
            values[f"card.{i}.header.link"] = next(cards, "")
        values.update({f"card.{i}.{j}": next(cards, "") for j in range(1, len(card.body) + 1)})
        for k, button in enumerate(card.buttons):
            value = next(cards, "")
            if button.sub_type == "url":
                values[f"card.{i}.button.{k}"] = value
    return values


def check_media(template: TemplateSpec) -> None:
    """Chat App takes a header file by link only: its SDK's send models have no media id (TemplateParams are
    strings; a free-form media message's Content is {link, caption, fileName}), and its one upload operation
    (GetChatappUploadAuthorization) hands out Object Storage credentials for template material, not an id a send
    can name. A spec giving an `id` or a local `file` is refused here, naming the field, before anything is sent."""
    headers = [("template.header_media", template.header_media)]
    headers += [(f"template.cards.{i}.header_media", card.header_media) for i, card in enumerate(template.cards)]
    for field, media in headers:
        for source in ("id", "file"):
            if media is not None and getattr(media, source, None) is not None:
                raise SpecError(f"{field}.{source}: Chat App takes a header file by 'link' only (Alibaba's send "
                                f"models have no media id); host the file and give its https link")


def flow_action(template: TemplateSpec, params: dict[str, list[str]]) -> dict[str, Any] | None:
    """A flow button's token and data as the SDK's FlowAction (`FlowToken`, `FlowActionData`)."""
    buttons = params.get("buttons") or []
    for index, button in enumerate(template.buttons):
        if button.sub_type == "flow" and index < len(buttons):
            action: dict[str, Any] = {"FlowToken": buttons[index]}
            if button.flow_action_data:
                action["FlowActionData"] = dict(button.flow_action_data)
            return action
    return None


def fallback_parameters(options: dict[str, Any]) -> dict[str, Any]:
    """FallBackId / FallBackContent / FallBackDuration / FallBackRule from provider.options."""
    out: dict[str, Any] = {}
    if options.get("fallback_id"):
        out["FallBackId"] = str(options["fallback_id"])
    if options.get("fallback_content"):
        out["FallBackContent"] = str(options["fallback_content"])
    if options.get("fallback_duration_s") is not None:
        seconds = int(options["fallback_duration_s"])
        if not 60 <= seconds <= 43200:
            raise SpecError(f"provider.options.fallback_duration_s: {seconds} is not 60 to 43200 seconds")
        out["FallBackDuration"] = seconds
    if options.get("fallback_rule") is not None:
        if options["fallback_rule"] not in FALLBACK_RULES:
            raise SpecError(f"provider.options.fallback_rule: {options['fallback_rule']!r} is not one of "
                            f"{sorted(FALLBACK_RULES)}")
        out["FallBackRule"] = options["fallback_rule"]
    if out and "FallBackId" not in out:
        raise SpecError("provider.options.fallback_id: Chat App's fallback needs the policy id (S0…)")
    return out
