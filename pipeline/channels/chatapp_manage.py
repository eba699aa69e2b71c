"""Alibaba Chat App's template and number API (`cams` 2020-06-06, docs/providers.md §3.8): `ListChatappTemplate`
(paged by `Page={"Index","Size"}`), `GetChatappTemplateDetail` for each template's components,
`QueryChatappPhoneNumbers`, `CreateChatappTemplate` and `ModifyChatappTemplate`, ACS3-signed like the sends.
Components come back in Alibaba's PascalCase (`Type`, `Format`, `Text`, `Buttons[{Type, Text, Url}]`) and are
kept in Meta's lower-case shape, so the registry's rules read both providers alike.
"""

from __future__ import annotations

from typing import Any

import httpx

from pipeline.channels.acs3 import sign_request
from pipeline.channels.chatapp import API_VERSION, encode_form
from pipeline.channels.templates import Limits, ProviderNumber, ProviderTemplate, SyncError

PROVIDER = "chatapp"
# AuditStatus (ListChatappTemplate) as Meta's statuses: pass / fail / auditing / unaudit (review on hold).
AUDIT_STATUS = {"pass": "APPROVED", "fail": "REJECTED", "auditing": "PENDING", "unaudit": "PENDING",
                "paused": "PAUSED", "disabled": "DISABLED"}


def meta_components(components: Any) -> list[dict[str, Any]]:
    """Alibaba's components in Meta's shape (lower-case keys, upper-case type values)."""
    out: list[dict[str, Any]] = []
    for c in components if isinstance(components, list) else []:
        if not isinstance(c, dict):
            continue
        item: dict[str, Any] = {"type": str(c.get("Type", "")).upper()}
        if c.get("Format"):
            item["format"] = str(c["Format"]).upper()
        if c.get("Text") is not None:
            item["text"] = c["Text"]
        if isinstance(c.get("Buttons"), list):
            item["buttons"] = [{k.lower() if k != "PhoneNumber" else "phone_number": v for k, v in b.items()}
                               for b in c["Buttons"] if isinstance(b, dict)]
            for b in item["buttons"]:
                b["type"] = str(b.get("type", "")).upper()
        out.append(item)
    return out


def alibaba_components(components: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Meta-shaped components as CreateChatappTemplate takes them."""
    out = []
    for c in components:
        item: dict[str, Any] = {"Type": str(c.get("type", "")).upper()}
        if c.get("format"):
            item["Format"] = c["format"]
        if c.get("text") is not None:
            item["Text"] = c["text"]
        if c.get("buttons"):
            item["Buttons"] = [{("PhoneNumber" if k == "phone_number" else k.capitalize()): v for k, v in b.items()}
                               for b in c["buttons"]]
        out.append(item)
    return out


class ChatAppManagement:
    def __init__(self, *, base_url: str, access_key_id: str, access_key_secret: str, cust_space_id: str | None = None,
                 limits: Limits | None = None, transport: httpx.BaseTransport | None = None,
                 timeout_s: float = 30.0) -> None:
        self.url = base_url.rstrip("/") + "/"
        self.host = httpx.URL(self.url).netloc.decode("ascii")
        self.account = cust_space_id or ""
        self.limits = limits or Limits()
        self._key_id, self._key_secret = access_key_id, access_key_secret
        self._client = httpx.Client(transport=transport, timeout=timeout_s, trust_env=transport is None)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ChatAppManagement:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, action: str, params: dict[str, Any]) -> dict[str, Any]:
        if self.account:
            params = {**params, "CustSpaceId": self.account}
        body = encode_form(params)
        headers = sign_request(method="POST", host=self.host, action=action, version=API_VERSION,
                               access_key_id=self._key_id, access_key_secret=self._key_secret, body=body)
        headers["content-type"] = "application/x-www-form-urlencoded"
        try:
            response = self._client.post(self.url, content=body, headers=headers)
            data = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise SyncError(f"{action}: {type(exc).__name__}") from None
        if not isinstance(data, dict) or data.get("Code") != "OK":
            code = data.get("Code") if isinstance(data, dict) else "malformed answer"
            message = data.get("Message") if isinstance(data, dict) else ""
            raise SyncError(f"{action}: HTTP {response.status_code} {code} {message}".rstrip())
        return data

    def templates(self) -> list[ProviderTemplate]:
        listed: list[dict[str, Any]] = []
        index = 1
        while True:
            data = self._call("ListChatappTemplate", {"TemplateType": "WHATSAPP",
                                                      "Page": {"Index": index, "Size": self.limits.page_size}})
            page = data.get("ListTemplate")
            if not isinstance(page, list) or not all(isinstance(x, dict) for x in page):
                raise SyncError("ListChatappTemplate: `ListTemplate` is not a list of objects")
            listed += page
            if len(listed) > self.limits.templates:
                raise SyncError(f"ListChatappTemplate: more than {self.limits.templates:,} templates "
                                "(raise the bound to read them all)")
            total = data.get("Total")
            if not page or len(page) < self.limits.page_size or (isinstance(total, int) and len(listed) >= total):
                break
            index += 1
        return [self._detail(x) for x in listed]

    def _detail(self, listed: dict[str, Any]) -> ProviderTemplate:
        code, language = listed.get("TemplateCode"), listed.get("Language")
        if not isinstance(code, str) or not isinstance(language, str):
            raise SyncError(f"ListChatappTemplate: a template without TemplateCode or Language: {str(listed)[:200]}")
        data = self._call("GetChatappTemplateDetail", {"TemplateCode": code, "Language": language,
                                                       "TemplateType": "WHATSAPP"}).get("Data")
        if not isinstance(data, dict):
            raise SyncError(f"GetChatappTemplateDetail {code}: no `Data`")
        audit = str(data.get("AuditStatus") or listed.get("AuditStatus") or "").lower()
        return ProviderTemplate(
            provider=PROVIDER, account=self.account, name=str(data.get("Name") or listed.get("TemplateName")),
            language=language, status=AUDIT_STATUS.get(audit, audit.upper() or "UNKNOWN"),
            category=str(data.get("Category") or listed.get("Category") or "").upper() or None,
            components=meta_components(data.get("Components")), template_id=code,
            quality=data.get("QualityScore") or None, reason=listed.get("Reason") or data.get("Reason"),
        )

    def numbers(self) -> list[ProviderNumber]:
        data = self._call("QueryChatappPhoneNumbers", {})
        found = data.get("PhoneNumbers")
        if not isinstance(found, list) or not all(isinstance(x, dict) for x in found):
            raise SyncError("QueryChatappPhoneNumbers: `PhoneNumbers` is not a list of objects")
        if len(found) > self.limits.numbers:
            raise SyncError(f"QueryChatappPhoneNumbers: more than {self.limits.numbers:,} numbers")
        return [ProviderNumber(
            provider=PROVIDER, account=self.account, phone_number_id=str(x.get("PhoneNumber")),
            display_phone_number=x.get("PhoneNumber"), verified_name=x.get("VerifiedName"), status=x.get("Status"),
            quality_rating=x.get("QualityRating"), messaging_limit_tier=x.get("MessagingLimitTier"),
            code_verification_status=x.get("CodeVerificationStatus"),
        ) for x in found]

    def create(self, name: str, language: str, category: str, components: list[dict[str, Any]]) -> dict[str, Any]:
        data = self._call("CreateChatappTemplate", {
            "TemplateType": "WHATSAPP", "Name": name, "Language": language, "Category": category.upper(),
            "Components": alibaba_components(components)})
        return data.get("Data") if isinstance(data.get("Data"), dict) else {}

    def edit(self, template_code: str, language: str, category: str | None,
             components: list[dict[str, Any]]) -> dict[str, Any]:
        params: dict[str, Any] = {"TemplateType": "WHATSAPP", "TemplateCode": template_code, "Language": language,
                                  "Components": alibaba_components(components)}
        if category:
            params["Category"] = category.upper()
        data = self._call("ModifyChatappTemplate", params)
        return data.get("Data") if isinstance(data.get("Data"), dict) else {}
