"""Meta's WhatsApp Business Management API for templates and numbers (docs/providers.md §1.11): list the
templates of a WhatsApp Business Account (`GET /{version}/{waba-id}/message_templates`, cursor-paged) and its
phone numbers (`GET /{version}/{waba-id}/phone_numbers`), create (`POST /{waba-id}/message_templates`), edit
(`POST /{template-id}`) and delete (`DELETE /{waba-id}/message_templates?name=`). Every read is bounded
(templates.Limits). Wire shapes: Meta's OpenAPI description (pipeline/sandbox/data/meta-...-v23.0.yaml).
"""

from __future__ import annotations

from typing import Any

import httpx

from pipeline.channels.templates import Limits, ProviderNumber, ProviderTemplate, SyncError, limit_tier

PROVIDER = "whatsapp"
TEMPLATE_FIELDS = "id,name,language,status,category,previous_category,components,quality_score,rejected_reason"
# The messaging limit is `whatsapp_business_manager_messaging_limit` (the portfolio's, §1.6); `messaging_limit_tier`
# is deprecated and not asked for (a field Meta removes fails the whole call).
LIMIT_FIELD, OLD_LIMIT_FIELD = "whatsapp_business_manager_messaging_limit", "messaging_limit_tier"
NUMBER_FIELDS = (f"id,display_phone_number,verified_name,status,quality_rating,{LIMIT_FIELD},"
                 "code_verification_status")


class MetaManagement:
    def __init__(self, *, base_url: str, api_version: str, waba_id: str, access_token: str,
                 limits: Limits | None = None, transport: httpx.BaseTransport | None = None,
                 timeout_s: float = 30.0) -> None:
        if not waba_id.isdigit():
            raise SyncError(f"provider.options.waba_id: {waba_id!r} is not a WhatsApp Business Account id")
        self.account = waba_id
        self.limits = limits or Limits()
        self._client = httpx.Client(base_url=f"{base_url.rstrip('/')}/{api_version}/", transport=transport,
                                    headers={"Authorization": f"Bearer {access_token}"}, timeout=timeout_s,
                                    trust_env=transport is None)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> MetaManagement:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise SyncError(f"{method} {path}: {type(exc).__name__}") from None
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.status_code != 200 or not isinstance(data, dict):
            error = data.get("error") if isinstance(data, dict) else None
            what = f"({error.get('code')}) {error.get('message')}" if isinstance(error, dict) else "malformed answer"
            raise SyncError(f"{method} {path}: HTTP {response.status_code} {what}")
        return data

    def _pages(self, path: str, fields: str, most: int) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            params = {"fields": fields, "limit": str(min(self.limits.page_size, most - len(items) or 1))}
            if after:
                params["after"] = after
            data = self._call("GET", path, params=params)
            page = data.get("data")
            if not isinstance(page, list) or not all(isinstance(x, dict) for x in page):
                raise SyncError(f"GET {path}: `data` is not a list of objects")
            items += page
            if len(items) > most:
                raise SyncError(f"GET {path}: more than {most:,} items (raise the bound to read them all)")
            paging = data.get("paging") if isinstance(data.get("paging"), dict) else {}
            cursor = (paging.get("cursors") or {}).get("after") if isinstance(paging.get("cursors"), dict) else None
            if not page or not paging.get("next") or not isinstance(cursor, str) or cursor == after:
                return items
            after = cursor

    def templates(self) -> list[ProviderTemplate]:
        return [_template(self.account, x) for x in
                self._pages(f"{self.account}/message_templates", TEMPLATE_FIELDS, self.limits.templates)]

    def numbers(self) -> list[ProviderNumber]:
        return [ProviderNumber(
            provider=PROVIDER, account=self.account, phone_number_id=str(x.get("id")),
            display_phone_number=x.get("display_phone_number"), verified_name=x.get("verified_name"),
            status=x.get("status"), quality_rating=x.get("quality_rating"),
            messaging_limit_tier=_limit(x), code_verification_status=x.get("code_verification_status"),
        ) for x in self._pages(f"{self.account}/phone_numbers", NUMBER_FIELDS, self.limits.numbers)]

    def create(self, name: str, language: str, category: str, components: list[dict[str, Any]]) -> dict[str, Any]:
        """Meta's answer: {id, status, category} (a new template is PENDING until reviewed)."""
        return self._call("POST", f"{self.account}/message_templates", json={
            "name": name, "language": language, "category": category.upper(), "components": components})

    def edit(self, template_id: str, category: str | None, components: list[dict[str, Any]]) -> dict[str, Any]:
        body: dict[str, Any] = {"components": components}
        if category:
            body["category"] = category.upper()
        return self._call("POST", template_id, json=body)

    def delete(self, name: str) -> dict[str, Any]:
        return self._call("DELETE", f"{self.account}/message_templates", params={"name": name})


def _limit(x: dict[str, Any]) -> str | None:
    """The number's tier. The old field is read only when the answer carries it without the new one: a relay or an
    older Graph API version that answers every field, whatever `fields` asks, still gives the number a limit."""
    value = x.get(LIMIT_FIELD)
    try:
        return limit_tier(x.get(OLD_LIMIT_FIELD) if value is None else value)
    except ValueError as exc:
        raise SyncError(f"number {x.get('id')}: {exc}") from None


def _template(account: str, x: dict[str, Any]) -> ProviderTemplate:
    name, language, status = x.get("name"), x.get("language"), x.get("status")
    if not all(isinstance(v, str) and v for v in (name, language, status)):
        raise SyncError(f"a template without name, language or status: {str(x)[:200]}")
    quality = x.get("quality_score")
    components = x.get("components") if isinstance(x.get("components"), list) else []
    return ProviderTemplate(
        provider=PROVIDER, account=account, name=str(name), language=str(language), status=str(status).upper(),
        category=(str(x["category"]).upper() if x.get("category") else None), components=components,
        template_id=str(x["id"]) if x.get("id") is not None else None,
        quality=(quality.get("score") if isinstance(quality, dict) else quality) or None,
        previous_category=x.get("previous_category"), reason=x.get("rejected_reason"),
    )
