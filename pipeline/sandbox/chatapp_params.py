"""The request parameters each Chat App action takes, as Alibaba's own SDK models name them
(`alibabacloud_cams20200606`, 5.3.1: each `<Action>ShrinkRequest` / `<Action>Request`.to_map): the Chat App
sandbox refuses any other, so a request the official client would not build fails here too.
tests/sandbox/test_chatapp_sdk_models.py checks these sets against the installed SDK."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

_COMMON = frozenset({"OwnerId", "ResourceOwnerAccount", "ResourceOwnerId", "IsvCode", "CustSpaceId", "CustWabaId"})
_FALLBACK = frozenset({"FallBackContent", "FallBackDuration", "FallBackId", "FallBackRule"})
PARAMETERS: dict[str, frozenset[str]] = {
    "SendChatappMessage": _COMMON | _FALLBACK | frozenset({
        "AdAccountId", "Category", "ChannelType", "Content", "ContextMessageId", "FlowAction", "From", "Label",
        "Language", "MessageCampaignId", "MessageType", "Payload", "ProductAction", "RecipientType", "Tag",
        "TaskId", "TemplateCode", "TemplateName", "TemplateParams", "To", "TokenType", "TrackingData", "Ttl",
        "Type"}),
    "SendChatappMassMessage": _COMMON | _FALLBACK | frozenset({
        "ChannelType", "From", "Label", "Language", "SenderList", "Tag", "TaskId", "TemplateCode", "TemplateName",
        "Ttl"}),
    "ListChatappTemplate": _COMMON | frozenset({"AuditStatus", "Category", "Code", "Language", "Name", "Page",
                                                "TemplateType"}),
    "GetChatappTemplateDetail": frozenset({"CustSpaceId", "CustWabaId", "IsvCode", "Language", "TemplateCode",
                                           "TemplateName", "TemplateType"}),
    "QueryChatappPhoneNumbers": frozenset({"CustSpaceId", "IsvCode", "OwnerId", "ResourceOwnerAccount",
                                           "ResourceOwnerId", "Status"}),
    "CreateChatappTemplate": frozenset({"AllowCategoryChange", "Category", "CategoryChangePaused", "Components",
                                        "CustSpaceId", "CustWabaId", "Example", "IsvCode", "Language",
                                        "MessageSendTtlSeconds", "Name", "ProductSetId", "TemplateType"}),
    "ModifyChatappTemplate": frozenset({"Category", "CategoryChangePaused", "Components", "CustSpaceId",
                                        "CustWabaId", "Example", "IsvCode", "Language", "MessageSendTtlSeconds",
                                        "ProductSetId", "TemplateCode", "TemplateName", "TemplateType"}),
}
# A SenderList item (SendChatappMassMessageRequestSenderList).
SENDER_LIST_ITEM = frozenset({"FlowAction", "Payload", "ProductAction", "RecipientType", "TemplateParams", "To"})
# Signature and protocol parameters an RPC call may also carry in its query (V2 style), never the action's own.
_PROTOCOL = frozenset({"Action", "Version", "Format", "AccessKeyId", "Signature", "SignatureMethod",
                       "SignatureVersion", "SignatureNonce", "Timestamp", "RegionId"})


def unknown_parameters(action: str, params: dict[str, Any]) -> list[str]:
    """Parameters of the request the SDK's model of `action` does not have, sorted."""
    allowed = PARAMETERS.get(action, frozenset()) | _PROTOCOL
    return sorted(name for name in params if name not in allowed)


MEDIA_FORMATS = frozenset({"IMAGE", "VIDEO", "DOCUMENT"})


def template_variables(components: list[dict[str, Any]]) -> set[str]:
    """The TemplateParams names a template's components need beyond the body's positions: "header.1" for a
    text header with a variable, "header.link" for a media header (Chat App takes files by link), "button.<index>"
    for a URL button with a dynamic suffix, and a copy-code button's coupon variable, `$(name)` in its CouponCode
    (channels/chatapp_params.py)."""
    needed: set[str] = set()
    for component in components:
        kind = str(component.get("type", "")).upper()
        header_format = str(component.get("format", "TEXT")).upper()
        if kind == "HEADER" and header_format == "TEXT" and "{{1}}" in str(component.get("text", "")):
            needed.add("header.1")
        if kind == "HEADER" and header_format in MEDIA_FORMATS:
            needed.add("header.link")
        if kind == "BUTTONS":
            for index, button in enumerate(component.get("buttons") or []):
                if str(button.get("type", "")).upper() == "URL" and "{{1}}" in str(button.get("url", "")):
                    needed.add(f"button.{index}")
                # Alibaba's copy-code button names its coupon as a variable, "$(couponCode)", given when sending.
                coupon = re.fullmatch(r"\$\((\w+)\)", str(button.get("coupon_code") or button.get("CouponCode") or ""))
                if str(button.get("type", "")).upper() == "COPY_CODE" and coupon:
                    needed.add(coupon.group(1))
    return needed


def value_problems(values: Any) -> list[str]:
    """What the SDK's model refuses in TemplateParams (Dict[str, str]: every name and value a string) or Meta
    would: a header file's link that is not an http(s) URL."""
    if not isinstance(values, dict):
        return ["TemplateParams must be a JSON object"]
    problems = [f"{name} is not a string" for name, value in values.items() if not isinstance(value, str)]
    link = values.get("header.link")
    if isinstance(link, str) and not link.startswith(("https://", "http://")):
        problems.append("header.link is not an http(s) link")
    return problems


def missing_variables(templates: Iterable[dict[str, Any]], params: dict[str, str], values: Any) -> list[str]:
    """The header and button variables a configured template needs that a send's TemplateParams lacks (Alibaba
    fails such a send); nothing for a template the sandbox does not hold."""
    wanted = params.get("TemplateCode") or params.get("TemplateName")
    template = next((t for t in templates if wanted in (t["code"], t["name"])
                     and t["language"] == params.get("Language")), None)
    if template is None or not isinstance(values, dict):
        return []
    return sorted(template_variables(template["components"]) - set(values))
