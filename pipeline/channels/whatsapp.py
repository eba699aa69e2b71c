"""WhatsApp Cloud API (Meta Graph API): template sends and the classification of Meta's answers.

Wire format: POST {base}/{version}/{phone-number-id}/messages with a Bearer token; see
docs/providers.md §1. Webhook parsing and signatures live in `whatsapp_webhooks.py`.
"""

from __future__ import annotations

import json
from typing import Any

from pipeline.channels.base import (
    HttpChannel,
    HttpSession,
    Outgoing,
    SenderRate,
    SenderRateUnknown,
    SendOutcome,
    SendRequest,
    retry_after_s,
)
from pipeline.channels.whatsapp_session import is_session, session_body
from pipeline.render.components import build_whatsapp_components

# Meta's error codes by what the dispatcher should do about them (docs/providers.md §1.5).
THROTTLE_CODES = frozenset({4, 80007, 130429})
# 131056: too many messages to the same recipient; other recipients are unaffected, so only that
# message waits (~1 per 6 s per user is the public figure) and the sender keeps its pace.
PAIR_LIMIT_CODE = 131056
PAIR_LIMIT_WAIT_S = 6.0
RETRYABLE_CODES = frozenset({1, 2, 131000, 131016, 131057, 133004, PAIR_LIMIT_CODE}) | THROTTLE_CODES
# Errors that concern the whole account, number or template: continuing would only fail again
# (or harm the number's quality), so the channel stops and everything unsent stays queued.
# The template family (132001 unknown or not approved, 132005 text too long, 132007 policy, 132012 parameter
# format, 132015 paused, 132016 disabled) concerns every message of the template: the first one stops the channel.
TEMPLATE_STOP_CODES = frozenset({132001, 132005, 132007, 132012, 132015, 132016})
STOP_CODES = frozenset({0, 3, 10, 190, 368, 131031, 131042, 131048, 131064}) | TEMPLATE_STOP_CODES | frozenset(
    range(200, 300)
)
# 131049 (per-user marketing limit): Meta says resending within 24 h just fails again.
DEFERRED_CODES = {131049: 24 * 3600.0}
# A number's throughput level (docs/providers.md §1.7): STANDARD is Meta's default of 80 messages/s; HIGH (1,000/s)
# is the spec's own ceiling and NOT_APPLICABLE names no rate, so neither slows a lane.
STANDARD_PER_S = 80.0
THROUGHPUT_LEVELS = frozenset({"STANDARD", "HIGH", "NOT_APPLICABLE"})


def error_meaning(code: int) -> str:
    return _MEANINGS.get(code, "")


_MEANINGS = {
    130429: "Cloud API throughput reached",
    131026: "Message undeliverable",
    131047: "Re-engagement message (over 24 h since last reply)",
    131049: "Not delivered to maintain ecosystem engagement (per-user marketing limit)",
    131050: "User stopped marketing messages",
    131056: "Pair rate limit (too many to the same user)",
    132001: "Template does not exist or is not approved",
    132015: "Template paused",
    132016: "Template disabled",
    190: "Access token expired or invalid",
    368: "Account restricted for policy violation",
}


class WhatsAppChannel(HttpChannel):
    name = "whatsapp"
    max_batch = 1
    credentials = {"access_token": "WHATSAPP_ACCESS_TOKEN", "app_secret": "WHATSAPP_APP_SECRET",
                   "verify_token": "WHATSAPP_VERIFY_TOKEN"}

    def __init__(self, *, base_url: str, api_version: str, phone_number_id: str, access_token: str) -> None:
        self.url = f"{base_url.rstrip('/')}/{api_version}/{phone_number_id}/messages"
        self.throughput_url = f"{base_url.rstrip('/')}/{api_version}/{phone_number_id}?fields=throughput"
        self.phone_number_id = phone_number_id
        # Built once: every request of a campaign carries the same headers.
        self._headers = {"Authorization": f"Bearer {access_token}", "Content-Type": "application/json"}

    async def sender_rate(self, session: HttpSession) -> SenderRate | None:
        """The number's allowance from its throughput level (`GET /{phone-number-id}?fields=throughput`, answered
        `{"throughput": {"level": ...}, "id": ...}`), read before its lane sends: STANDARD -> 80 messages/s; None
        when the level leaves the spec's rate. SenderRateUnknown when it cannot be read."""
        asked = f"GET /{self.phone_number_id}?fields=throughput"
        try:
            response = await session.get(self.throughput_url, headers={"Authorization": self._headers["Authorization"]})
        except Exception as exc:  # translated at the edge: the dispatcher keeps the spec's rate
            raise SenderRateUnknown(f"{asked}: {type(exc).__name__}") from None
        try:
            data = json.loads(response.content)
        except ValueError:
            data = None
        throughput = data.get("throughput") if isinstance(data, dict) else None
        level = throughput.get("level") if isinstance(throughput, dict) else None
        if response.status_code != 200 or level not in THROUGHPUT_LEVELS:
            error = data.get("error") if isinstance(data, dict) else None
            what = f"({error.get('code')}) {error.get('message')}" if isinstance(error, dict) else f"level {level!r}"
            raise SenderRateUnknown(f"{asked}: HTTP {response.status_code} {what}")
        if level != "STANDARD":
            return None
        return SenderRate(per_second=STANDARD_PER_S,
                          why=f"throughput level STANDARD: {STANDARD_PER_S:g} messages/s (docs/providers.md §1.7)")

    def build_payload(self, message: Outgoing) -> dict[str, Any]:
        template, params = message.template, message.params
        if template.session is not None and is_session(params):  # inside the window: free-form
            kind, body = session_body(template.session, message.text or "")
            return {"messaging_product": "whatsapp", "recipient_type": "individual", "to": message.to.lstrip("+"),
                    "type": kind, kind: body, "biz_opaque_callback_data": message.message_id}
        components = build_whatsapp_components(template, params)
        return {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": message.to.lstrip("+"),
            "type": "template",
            "template": {
                "name": template.name,
                # The spec marks `policy` required; "deterministic" is its only value.
                "language": {"code": template.language, "policy": "deterministic"},
                "components": components,
            },
            # Echoed on every status webhook: how receipts find our message after a crash.
            "biz_opaque_callback_data": message.message_id,
        }

    def request_for(self, payload_json: str) -> SendRequest:
        return SendRequest(url=self.url, headers=self._headers, content=payload_json.encode())

    def classify_response(self, status_code: int, body: bytes, headers: Any) -> SendOutcome:
        retry_after = retry_after_s(headers)
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if status_code == 200 and isinstance(data, dict):
            messages = data.get("messages")
            if isinstance(messages, list) and messages and isinstance(messages[0], dict) and messages[0].get("id"):
                return SendOutcome(kind="sent", provider_message_id=str(messages[0]["id"]))
        error = data.get("error") if isinstance(data, dict) else None
        if not isinstance(error, dict) or not isinstance(error.get("code"), int):
            # A malformed answer: the message may or may not have gone out. 5xx is Meta's own
            # trouble and retried; anything else is recorded, not guessed at.
            kind = "retry" if status_code >= 500 or status_code == 429 else "permanent"
            return SendOutcome(
                kind=kind, error_code=f"http_{status_code}", error_detail="malformed provider response",
                retry_after_s=retry_after, throttled=status_code == 429,
            )
        code = error["code"]
        details = (error.get("error_data") or {}).get("details") or error.get("message") or ""
        detail = f"{error_meaning(code) or error.get('message', '')}: {details}".strip(": ")
        if code in STOP_CODES:
            kind = "stop"
        elif code in RETRYABLE_CODES or status_code >= 500:
            kind = "retry"
        else:
            kind = "permanent"
        if code == PAIR_LIMIT_CODE:
            return SendOutcome(kind="retry", error_code=str(code), error_detail=detail,
                               retry_after_s=max(PAIR_LIMIT_WAIT_S, retry_after or 0.0))
        if code in DEFERRED_CODES:
            return SendOutcome(kind="retry", error_code=str(code), error_detail=detail,
                               retry_after_s=DEFERRED_CODES[code])
        return SendOutcome(kind=kind, error_code=str(code), error_detail=detail,
                           retry_after_s=retry_after, throttled=code in THROTTLE_CODES)

