"""Viber REST Bot API: `send_message` text sends and the classification of Viber's answers (docs/providers.md §4.1).

POST {base}/pa/send_message with `X-Viber-Auth-Token`. Viber answers HTTP 200 even on errors: the
outcome is the `status` inside the body. `tracking_data` carries our message id.

Transactional vs promotional: the bot API has no field for the message class, so the stored
payload keeps it as `_label` ("promotional" for marketing templates, else "transactional") for
billing and reports; keys starting with `_` are ours and are stripped before the request leaves.
"""

from __future__ import annotations

import json
from typing import Any

from pipeline.channels.base import HttpChannel, Outgoing, SendOutcome, SendRequest
from pipeline.channels.rich import check_kinds, viber_message
from pipeline.spec import CampaignSpec, SpecError

DEFAULT_BASE_URL = "https://chatapi.viber.com"
MAX_TEXT = 7000
MAX_SENDER_NAME = 28

STATUS_NAMES = {
    0: "ok", 1: "invalidUrl", 2: "invalidAuthToken", 3: "badData", 4: "missingData", 5: "receiverNotRegistered",
    6: "receiverNotSubscribed", 7: "publicAccountBlocked", 8: "publicAccountNotFound", 9: "publicAccountSuspended",
    10: "webhookNotSet", 11: "receiverNoSuitableDevice", 12: "tooManyRequests", 13: "apiVersionNotSupported",
    14: "incompatibleWithVersion", 15: "publicAccountNotAuthorized", 16: "inboxMessageStateMismatch",
    17: "unsupportedMessageType", 18: "messageRateExceeded", 19: "editMessageFailed", 20: "unsupportedMedia",
}
THROTTLE_STATUSES = frozenset({12, 18})
# The bot's token or account: nothing else will go out until someone fixes it.
STOP_STATUSES = frozenset({2, 7, 8, 9, 10, 15})
# The receiver (5, 6, 11) or this request (1, 3, 4, 13, 14, 17, 20): only this message fails.
PERMANENT_STATUSES = frozenset({1, 3, 4, 5, 6, 11, 13, 14, 16, 17, 19, 20})


def label_for(category: str) -> str:
    return "promotional" if category == "marketing" else "transactional"


class ViberChannel(HttpChannel):
    name = "viber"
    max_batch = 1
    credentials = {"auth_token": "VIBER_AUTH_TOKEN"}

    def __init__(self, *, base_url: str, auth_token: str, sender_name: str, sender_avatar: str | None = None,
                 min_api_version: int | None = None) -> None:
        if not sender_name or len(sender_name) > MAX_SENDER_NAME:
            raise SpecError(f"provider.options.sender_name: 1 to {MAX_SENDER_NAME} characters, got {sender_name!r}")
        self.url = f"{base_url.rstrip('/')}/pa/send_message"
        self._headers = {"X-Viber-Auth-Token": auth_token, "Content-Type": "application/json"}
        self.sender: dict[str, str] = {"name": sender_name}
        if sender_avatar:
            self.sender["avatar"] = sender_avatar
        self.min_api_version = min_api_version

    def build_payload(self, message: Outgoing) -> dict[str, Any]:
        text = message.text
        if not text:
            raise ValueError(f"viber: message {message.message_id} has no rendered text")
        if len(text) > MAX_TEXT:
            raise ValueError(f"viber: text is {len(text)} characters, the limit is {MAX_TEXT}")
        payload: dict[str, Any] = {"receiver": message.to, "sender": self.sender,
                                   "tracking_data": message.message_id, "type": "text", "text": text}
        if message.template.session is not None:
            payload.update(viber_message(message.template.session, text))
        if self.min_api_version:
            payload["min_api_version"] = self.min_api_version
        payload["_label"] = label_for(message.template.category)
        return payload

    def request_for(self, payload_json: str) -> SendRequest:
        body = json.loads(payload_json)
        wire = {k: v for k, v in body.items() if not k.startswith("_")}
        return SendRequest(url=self.url, headers=self._headers,
                           content=json.dumps(wire, ensure_ascii=False, separators=(",", ":")).encode())

    def classify_response(self, status_code: int, body: bytes, headers: Any) -> SendOutcome:
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            data = None
        status = data.get("status") if isinstance(data, dict) else None
        if not isinstance(status, int) or isinstance(status, bool):
            kind = "retry" if status_code >= 500 or status_code == 429 else "permanent"
            return SendOutcome(kind=kind, error_code=f"http_{status_code}", error_detail="malformed provider response",
                               throttled=status_code == 429)
        assert isinstance(data, dict)
        if status == 0:
            token = data.get("message_token")
            if isinstance(token, int | str) and not isinstance(token, bool) and str(token):
                return SendOutcome(kind="sent", provider_message_id=str(token))
            return SendOutcome(kind="permanent", error_code="http_200", error_detail="malformed provider response")
        detail = str(data.get("status_message") or STATUS_NAMES.get(status, ""))
        if status in THROTTLE_STATUSES:
            return SendOutcome(kind="retry", error_code=str(status), error_detail=detail, throttled=True)
        if status in STOP_STATUSES:
            kind = "stop"
        elif status in PERMANENT_STATUSES:
            kind = "permanent"
        else:
            kind = "retry" if status_code >= 500 else "permanent"
        return SendOutcome(kind=kind, error_code=str(status), error_detail=detail)


def from_spec(spec: CampaignSpec, base_url: str | None) -> ViberChannel:
    """`provider.options`: sender_name (default: spec.sender), sender_avatar, min_api_version."""
    options = spec.provider.options
    version = options.get("min_api_version")
    check_kinds("viber", spec.template.session)
    return ViberChannel(
        base_url=base_url or spec.provider.base_url or DEFAULT_BASE_URL,
        auth_token=spec.secret("auth_token", ViberChannel.credentials["auth_token"]),
        sender_name=str(options.get("sender_name") or spec.sender),
        sender_avatar=options.get("sender_avatar"),
        min_api_version=int(version) if version is not None else None,
    )
