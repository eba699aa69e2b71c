"""Twilio Programmable Messaging (SMS): form-encoded sends with Basic auth and the classification of Twilio's answers.

Wire format: POST {base}/2010-04-01/Accounts/{AccountSid}/Messages.json (docs/providers.md §6.2). Twilio has
no correlation field, so our message id rides in the StatusCallback URL (`?mid=`); the callbacks are
parsed in `twilio_webhooks.py`. Billed per segment (§6.3).
"""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pipeline.channels.base import HttpChannel, Outgoing, SendOutcome, SendRequest, retry_after_s
from pipeline.channels.twilio_webhooks import CORRELATION_PARAM
from pipeline.render.segments import count_segments
from pipeline.spec import CampaignSpec, SpecError

API_VERSION = "2010-04-01"
DEFAULT_BASE_URL = "https://api.twilio.com"

THROTTLE_CODES = frozenset({20429})  # REST API too many requests
# 14107: more than 30 messages between the same two numbers within 30 s fails for 30 s. Other recipients are
# unaffected, so only that message waits and the sender keeps its pace (as WhatsApp's 131056).
PAIR_LIMIT_CODE = 14107
PAIR_LIMIT_WAIT_S = 30.0
RETRYABLE_CODES = frozenset({20500, 20503, 30001}) | THROTTLE_CODES  # Twilio's own trouble, queue overflow
# Account-wide problems: bad credentials, suspended account, unknown account, a sender the account
# does not own. Every further message would fail the same way, so the channel stops.
STOP_CODES = frozenset({20003, 20005, 20404, 21606, 21212})
# Everything else with a code (21211 invalid To, 21610 unsubscribed, 21408 region not enabled,
# 21635 landline, 21614 not a mobile number, 21617 body too long, ...) concerns this message only.

_MEANINGS = {
    20003: "Authentication failed", 20005: "Account not active", 20404: "Account or resource not found",
    20429: "Too many requests", 21211: "Invalid 'To' phone number", 21212: "Invalid 'From' number",
    21408: "Region not enabled for SMS", 21606: "'From' is not a number or sender id of this account",
    21610: "Recipient unsubscribed (replied STOP)", 21614: "'To' is not a mobile number",
    21617: "Body exceeds 1600 characters", 21635: "'To' cannot be a landline",
    14107: "Pair rate limit (over 30 messages to this number within 30 s)",
}


class TwilioSmsChannel(HttpChannel):
    name = "sms"
    provider = "twilio"
    max_batch = 1
    pricing_unit = "segment"
    credentials = {"account_sid": "TWILIO_ACCOUNT_SID", "auth_token": "TWILIO_AUTH_TOKEN"}

    def __init__(
        self, *, base_url: str, account_sid: str, auth_token: str, sender: str,
        sender_ids: dict[str, str] | None = None, status_callback: str | None = None,
    ) -> None:
        self.url = f"{base_url.rstrip('/')}/{API_VERSION}/Accounts/{account_sid}/Messages.json"
        basic = base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode("ascii")
        self._headers = {
            "Authorization": f"Basic {basic}",
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
        }
        self.sender = sender
        self.sender_ids = dict(sender_ids or {})
        self.status_callback = status_callback

    def sender_for(self, country: str | None) -> str:
        """The From for a destination country: alphanumeric ids only work where carriers allow them."""
        return self.sender_ids.get(country or "", self.sender)

    def build_payload(self, message: Outgoing) -> dict[str, Any]:
        payload = {
            "To": message.to,
            "From": self.sender_for(message.country),
            "Body": message.text if message.text is not None else message.template.text,
        }
        if self.status_callback:
            payload["StatusCallback"] = callback_url(self.status_callback, message.message_id)
        return payload

    @staticmethod
    def segments(payload: dict[str, Any]) -> int:
        """Billed parts of one stored payload (Twilio's `num_segments` in its answer agrees)."""
        return count_segments(str(payload.get("Body", ""))).segments

    def request_for(self, payload_json: str) -> SendRequest:
        payload = json.loads(payload_json)
        return SendRequest(url=self.url, headers=self._headers, content=urlencode(payload).encode("ascii"))

    def classify_response(self, status_code: int, body: bytes, headers: Any) -> SendOutcome:
        retry_after = retry_after_s(headers)
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if status_code in (200, 201) and isinstance(data, dict):
            sid = data.get("sid")
            if isinstance(sid, str) and sid.startswith(("SM", "MM")):
                return SendOutcome(kind="sent", provider_message_id=sid)
        code = data.get("code") if isinstance(data, dict) else None
        if not isinstance(code, int):
            # A malformed answer: the message may or may not have gone out. 5xx and 429 are
            # Twilio's trouble and retried; anything else is recorded, not guessed at.
            kind = "retry" if status_code >= 500 or status_code == 429 else "permanent"
            return SendOutcome(kind=kind, error_code=f"http_{status_code}", error_detail="malformed provider response",
                               retry_after_s=retry_after, throttled=status_code == 429)
        detail = str(data.get("message") or _MEANINGS.get(code, ""))
        if code == PAIR_LIMIT_CODE:  # before the 429 check: a pair limit never slows the sender
            return SendOutcome(kind="retry", error_code=str(code), error_detail=detail,
                               retry_after_s=max(PAIR_LIMIT_WAIT_S, retry_after or 0.0))
        throttled = code in THROTTLE_CODES or status_code == 429
        if code in STOP_CODES:
            kind = "stop"
        elif throttled or code in RETRYABLE_CODES or status_code >= 500:
            kind = "retry"
        else:
            kind = "permanent"
        return SendOutcome(kind=kind, error_code=str(code), error_detail=detail,
                           retry_after_s=retry_after if kind == "retry" else None, throttled=throttled)


def callback_url(base: str, message_id: str) -> str:
    """`base` with our message id added to its query, keeping whatever query it already has."""
    parts = urlsplit(base)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != CORRELATION_PARAM]
    query.append((CORRELATION_PARAM, message_id))
    return urlunsplit(parts._replace(query=urlencode(query)))



def _options(spec: CampaignSpec) -> tuple[dict[str, str], str | None]:
    options = spec.provider.options
    sender_ids = options.get("sender_ids") or {}
    if not isinstance(sender_ids, dict) or not all(isinstance(v, str) for v in sender_ids.values()):
        raise SpecError("provider.options.sender_ids: expected a mapping of country code -> sender id")
    status_callback = options.get("status_callback")
    if status_callback is not None and (not isinstance(status_callback, str)
                                        or urlsplit(status_callback).scheme not in ("http", "https")):
        raise SpecError("provider.options.status_callback: expected an http(s) URL")
    return {str(k).upper(): v for k, v in sender_ids.items()}, status_callback


def from_spec(spec: CampaignSpec, base_url: str | None = None, sender: str | None = None) -> TwilioSmsChannel:
    """`sender` (one of the spec's senders; default `spec.sender`) is the From where no country sender id applies."""
    env = TwilioSmsChannel.credentials
    sender_ids, status_callback = _options(spec)
    return TwilioSmsChannel(
        base_url=base_url or spec.provider.base_url or DEFAULT_BASE_URL,
        account_sid=spec.secret("account_sid", env["account_sid"]),
        auth_token=spec.secret("auth_token", env["auth_token"]),
        sender=sender or spec.sender, sender_ids=sender_ids, status_callback=status_callback,
    )
