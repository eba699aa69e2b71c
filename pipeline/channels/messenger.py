"""Messenger and Instagram messaging (Meta Send API): text sends to a PSID / IGSID and the classification
of Meta's answers (docs/providers.md §5).

Messenger: POST {base}/{version}/{PAGE_ID}/messages with the Page token; Instagram (Instagram Login):
POST {base}/{version}/{IG_ID}/messages with the Instagram user token. The Send API takes no
correlation id: the returned `message_id` is stored and receipts join on it. Who may be sent to
(the 24-hour window) is decided before sending by `pipeline.audience.windows`.
"""

from __future__ import annotations

import json
from typing import Any

from pipeline.channels.base import HttpChannel, Outgoing, SendOutcome, SendRequest, retry_after_s
from pipeline.channels.rich import check_kinds, meta_message
from pipeline.spec import CampaignSpec, SpecError

# Outside the window only these tags may be sent, and only for non-promotional content.
MESSAGE_TAGS = frozenset({"ACCOUNT_UPDATE", "CONFIRMED_EVENT_UPDATE", "POST_PURCHASE_UPDATE", "HUMAN_AGENT",
                          "CUSTOMER_FEEDBACK"})
MESSAGING_TYPES = frozenset({"RESPONSE", "UPDATE", "MESSAGE_TAG"})
OUTSIDE_WINDOW_SUBCODES = frozenset({2018278, 2534022})
THROTTLE_CODES = frozenset({4, 32, 613})
RETRYABLE_CODES = frozenset({1, 2, 17}) | THROTTLE_CODES
# Token, permission and account problems: every further send would fail the same way.
STOP_CODES = frozenset({0, 3, 10, 190, 368}) | frozenset(range(200, 300))
_MEANINGS = {
    10: "Permission denied",
    551: "This person isn't available right now",
    613: "Calls to this api have exceeded the rate limit",
    190: "Access token expired or invalid",
    100: "Invalid parameter",
}


class MessengerChannel(HttpChannel):
    name = "messenger"
    max_batch = 1
    credentials = {"access_token": "MESSENGER_PAGE_ACCESS_TOKEN", "app_secret": "MESSENGER_APP_SECRET",
                   "verify_token": "MESSENGER_VERIFY_TOKEN"}
    default_base_url = "https://graph.facebook.com"
    max_text = 2000
    message_tags = MESSAGE_TAGS

    def __init__(self, *, base_url: str, api_version: str, account_id: str, access_token: str,
                 messaging_type: str | None = None, message_tag: str | None = None) -> None:
        if message_tag is not None and message_tag not in self.message_tags:
            raise SpecError(f"provider.options.message_tag: {message_tag!r} is not one of {sorted(self.message_tags)}")
        if messaging_type is not None and messaging_type not in MESSAGING_TYPES:
            raise SpecError(f"provider.options.messaging_type: {messaging_type!r} is not one of "
                            f"{sorted(MESSAGING_TYPES)}")
        self.url = f"{base_url.rstrip('/')}/{api_version}/{account_id}/messages"
        self._headers = {"Authorization": f"Bearer {access_token}", "Content-Type": "application/json"}
        self.message_tag = message_tag
        # A campaign is proactive: UPDATE inside the window, MESSAGE_TAG (non-promotional) outside it.
        self.messaging_type = "MESSAGE_TAG" if message_tag else (messaging_type or "UPDATE")

    def build_payload(self, message: Outgoing) -> dict[str, Any]:
        text = message.text
        if not text:
            raise ValueError(f"{self.name}: message {message.message_id} has no rendered text")
        if len(text) > self.max_text:
            raise ValueError(f"{self.name}: text is {len(text)} characters, the limit is {self.max_text}")
        payload: dict[str, Any] = {"recipient": {"id": message.to}, "messaging_type": self.messaging_type}
        if self.message_tag:
            payload["tag"] = self.message_tag
        session = message.template.session
        payload["message"] = meta_message(session, text) if session is not None else {"text": text}
        return payload

    def request_for(self, payload_json: str) -> SendRequest:
        return SendRequest(url=self.url, headers=self._headers, content=payload_json.encode())

    def classify_response(self, status_code: int, body: bytes, headers: Any) -> SendOutcome:
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            data = None
        if status_code == 200 and isinstance(data, dict) and isinstance(data.get("message_id"), str):
            return SendOutcome(kind="sent", provider_message_id=data["message_id"])
        error = data.get("error") if isinstance(data, dict) else None
        if not isinstance(error, dict) or not isinstance(error.get("code"), int):
            kind = "retry" if status_code >= 500 or status_code == 429 else "permanent"
            return SendOutcome(kind=kind, error_code=f"http_{status_code}", error_detail="malformed provider response",
                               throttled=status_code == 429)
        code, subcode = error["code"], error.get("error_subcode")
        detail = str(error.get("message") or _MEANINGS.get(code, ""))
        error_code = f"{code}/{subcode}" if subcode else str(code)
        if code == 10 and subcode in OUTSIDE_WINDOW_SUBCODES:
            kind = "permanent"  # this user is outside the 24 h window: only this message fails
        elif code in STOP_CODES:
            kind = "stop"
        elif code in RETRYABLE_CODES or status_code >= 500:
            kind = "retry"
        else:
            kind = "permanent"  # 551 unavailable, 100 invalid parameter / no matching user, ...
        return SendOutcome(kind=kind, error_code=error_code, error_detail=detail,
                           retry_after_s=retry_after_s(headers), throttled=code in THROTTLE_CODES)


class InstagramChannel(MessengerChannel):
    name = "instagram"
    credentials = {"access_token": "INSTAGRAM_ACCESS_TOKEN", "app_secret": "INSTAGRAM_APP_SECRET",
                   "verify_token": "INSTAGRAM_VERIFY_TOKEN"}
    default_base_url = "https://graph.instagram.com"
    max_text = 1000
    message_tags = frozenset({"HUMAN_AGENT"})  # the only tag Instagram messaging accepts



def _build(cls: type[MessengerChannel], spec: CampaignSpec, base_url: str | None) -> MessengerChannel:
    options = spec.provider.options
    if options.get("message_tag") and spec.template.category == "marketing":
        # Meta's policy: tags are for non-promotional updates; a tagged marketing send risks the Page.
        raise SpecError("provider.options.message_tag: message tags may not carry marketing content")
    check_kinds(cls.name, spec.template.session)
    if options.get("message_tag") == "CUSTOMER_FEEDBACK":
        # Meta: the tag is for the Customer Feedback template only, which a campaign message is not.
        raise SpecError("provider.options.message_tag: CUSTOMER_FEEDBACK may only carry Meta's Customer Feedback "
                        "template; this campaign sends its own message")
    return cls(
        base_url=base_url or spec.provider.base_url or cls.default_base_url,
        api_version=spec.provider.api_version or "v23.0",
        account_id=spec.sender,  # the Page id (Messenger) or the Instagram professional account id
        access_token=spec.secret("access_token", cls.credentials["access_token"]),
        messaging_type=options.get("messaging_type"),
        message_tag=options.get("message_tag"),
    )


def from_spec(spec: CampaignSpec, base_url: str | None) -> MessengerChannel:
    """`provider.options`: messaging_type (RESPONSE|UPDATE, default UPDATE), message_tag (non-marketing only)."""
    return _build(MessengerChannel, spec, base_url)


def instagram_from_spec(spec: CampaignSpec, base_url: str | None) -> MessengerChannel:
    return _build(InstagramChannel, spec, base_url)
