"""Alibaba Cloud ChatApp (`cams`, 2020-06-06): template sends to WhatsApp, Viber, Messenger or Instagram
through one RPC API, signed with ACS3-HMAC-SHA256 (docs/providers.md §3).

One message: `SendChatappMessage` with `TaskId` = our message id (echoed in every ChatAppStatus
callback). A batch: `SendChatappMassMessage` with a `SenderList` of up to 1,000 recipients; its one
`TaskId` (`mass-<hash of the message ids>`) is shared, so each recipient's provider id is
`<TaskId>:<To>` on both sides (outbox and receipts) and ingest joins them by provider id.
Parameters travel as a form body (`x-acs-action`/`x-acs-version` headers carry Action and Version).
"""

from __future__ import annotations

import hashlib
import json
import urllib.parse
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx

from pipeline.channels.acs3 import percent_encode, sign_request
from pipeline.channels.base import HttpSession, Outgoing, SendOutcome, classify_exception, http_session
from pipeline.channels.chatapp_params import check_media, fallback_parameters, flow_action, template_params
from pipeline.channels.whatsapp_session import is_session, session_body
from pipeline.records import CHATAPP_CHANNEL_TYPES
from pipeline.spec import CampaignSpec, SessionMessage, SpecError

API_VERSION = "2020-06-06"
DEFAULT_BASE_URL = "https://cams.ap-southeast-1.aliyuncs.com"
CHANNEL_TYPES = CHATAPP_CHANNEL_TYPES
MASS_PREFIX = "mass-"
MAX_MASS = 1000
# Per-recipient parameters of a stored payload (a SenderList item's fields in the SDK's
# SendChatappMassMessageRequestSenderList, plus our TaskId); everything else is shared by a mass send.
_PER_RECIPIENT = ("To", "TemplateParams", "Payload", "FlowAction", "TaskId")
# SendChatappMessage parameters SendChatappMassMessage does not take (its SDK model lacks them).
_SINGLE_ONLY = ("Type", "MessageType", "Content", "ContextMessageId")

# Codes (docs/providers.md §3.5 and Alibaba's gateway codes) by what the dispatcher should do.
_STOP_PREFIXES = ("Authentication.", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                  "IncompleteSignature", "InvalidTimeStamp", "ERR-OPERATION-MAAP-0060", "ERR-OPERATION-MAAP-0065")
_RETRY_CODES = frozenset({"999999", "CHAT.APIError", "ERR-COMMON-001", "InternalError", "ServiceUnavailable",
                          "SignatureNonceUsed"})


def mass_task_id(message_ids: list[str]) -> str:
    """Deterministic per batch: a resend of the same batch carries the same TaskId."""
    return MASS_PREFIX + hashlib.sha256("\x1f".join(message_ids).encode()).hexdigest()[:32]


def mass_provider_id(task_id: str, to: str) -> str:
    """How one recipient of a mass send is named in the outbox and in its receipts."""
    return f"{task_id}:{to}"


def classify(status_code: int, body: bytes) -> tuple[SendOutcome, dict[str, Any] | None]:
    """Alibaba's answer as an outcome, plus the parsed body when it had a usable shape."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        data = None
    code = data.get("Code") if isinstance(data, dict) else None
    if not isinstance(code, str) or not code:
        kind = "retry" if status_code >= 500 or status_code == 429 else "permanent"
        return SendOutcome(kind=kind, error_code=f"http_{status_code}", error_detail="malformed provider response",
                           throttled=status_code == 429), None
    assert isinstance(data, dict)
    detail = str(data.get("Message") or "")
    if code == "OK" and status_code == 200:
        if isinstance(data.get("MessageId") or data.get("GroupMessageId"), str):
            return SendOutcome(kind="sent"), data
        return SendOutcome(kind="permanent", error_code="http_200", error_detail="malformed provider response"), None
    if code.startswith("Throttling") or status_code == 429:
        return SendOutcome(kind="retry", error_code=code, error_detail=detail, throttled=True), None
    if code.startswith(_STOP_PREFIXES):
        return SendOutcome(kind="stop", error_code=code, error_detail=detail), None
    if code in _RETRY_CODES or status_code >= 500:
        return SendOutcome(kind="retry", error_code=code, error_detail=detail), None
    return SendOutcome(kind="permanent", error_code=code, error_detail=detail), None


class ChatAppChannel:
    name = "chatapp"
    max_batch = MAX_MASS
    credentials = {"access_key_id": "ALIBABA_CLOUD_ACCESS_KEY_ID",
                   "access_key_secret": "ALIBABA_CLOUD_ACCESS_KEY_SECRET",
                   "callback_token": "CHATAPP_CALLBACK_TOKEN"}

    def __init__(
        self, *, base_url: str, access_key_id: str, access_key_secret: str, channel_type: str, sender: str,
        cust_space_id: str | None = None, template_code: str | None = None, viber_ttl_s: int | None = None,
        fallback: dict[str, Any] | None = None,
    ) -> None:
        if channel_type not in CHANNEL_TYPES:
            raise SpecError(f"provider.options.channel_type: {channel_type!r} is not one of {sorted(CHANNEL_TYPES)}")
        self.url = base_url.rstrip("/") + "/"
        self.host = httpx.URL(self.url).netloc.decode("ascii")
        self.channel_type = channel_type
        self.sender = sender
        self.cust_space_id = cust_space_id
        self.template_code = template_code
        self.viber_ttl_s = viber_ttl_s
        self.fallback = fallback or {}
        self._key_id = access_key_id
        self._key_secret = access_key_secret

    # ------------------------------------------------------------------ payloads

    def build_payload(self, message: Outgoing) -> dict[str, Any]:
        """The `SendChatappMessage` parameters: TemplateParams by `template_params`, the quick replies'
        payloads in `Payload` (button order), the fallback settings."""
        template = message.template
        if template.session is not None and is_session(message.params):
            return self._session_payload(message, template.session)
        params: dict[str, Any] = {
            "ChannelType": self.channel_type,
            "Type": "template",
            "Language": template.language,
            "From": self.sender,
            "To": self._address(message.to),
            "TemplateParams": template_params(template, message.params),
            "TaskId": message.message_id,  # echoed in every ChatAppStatus: the correlation id
        }
        payloads = [b.payload for b in template.buttons if b.sub_type == "quick_reply" and b.payload]
        if payloads:
            params["Payload"] = payloads
        flow = flow_action(template, message.params)
        if flow:
            params["FlowAction"] = flow
        params.update(self.fallback)
        if self.template_code:
            params["TemplateCode"] = self.template_code
        else:
            params["TemplateName"] = template.name
        if self.cust_space_id:
            params["CustSpaceId"] = self.cust_space_id
        if self.channel_type == "viber":
            # Viber's message class: marketing is promotional, everything else transactional.
            params["Label"] = "promotion" if template.category == "marketing" else "transaction"
            if self.viber_ttl_s:
                params["Ttl"] = self.viber_ttl_s
        return params

    def _session_payload(self, message: Outgoing, session: SessionMessage) -> dict[str, Any]:
        """`Type=message`: `MessageType` and a `Content` JSON as Alibaba's SDK describes it for WhatsApp (text
        `{"text"}`, media `{"link", "caption", "fileName"}`, interactive Meta's `interactive` object)."""
        kind, body = session_body(session, message.text or "")
        if kind == "text":
            content: dict[str, Any] = {"text": body["body"]}
        elif kind == "interactive":
            content = body
        else:
            content = {"link": body["link"], "caption": body["caption"],
                       **({"fileName": body["filename"]} if "filename" in body else {})}
        params: dict[str, Any] = {"ChannelType": self.channel_type, "Type": "message", "MessageType": kind,
                                  "From": self.sender, "To": self._address(message.to),
                                  "Content": json.dumps(content, ensure_ascii=False, separators=(",", ":")),
                                  "TaskId": message.message_id}
        if self.cust_space_id:
            params["CustSpaceId"] = self.cust_space_id
        return params

    def _address(self, to: str) -> str:
        # Alibaba takes phone numbers as digits (no "+"); PSIDs / IG user ids are passed as they are.
        return to.lstrip("+") if self.channel_type in ("whatsapp", "viber") else to

    # ------------------------------------------------------------------ sending

    def open_session(
        self, timeout_s: float, transport: httpx.AsyncBaseTransport | None = None
    ) -> AbstractAsyncContextManager[HttpSession]:
        return http_session(timeout_s, transport)

    async def send(self, session: HttpSession, payloads: list[str]) -> list[SendOutcome]:
        """One outcome per payload, in order: single sends one by one, same-shaped batches as mass sends."""
        parsed = [json.loads(p) for p in payloads]
        outcomes: list[SendOutcome | None] = [None] * len(parsed)
        for chunk in _calls(parsed):
            if len(chunk) == 1:
                outcomes[chunk[0]] = await self._send_one(session, parsed[chunk[0]])
            else:
                for index, outcome in zip(chunk, await self._send_mass(session, [parsed[i] for i in chunk]),
                                          strict=True):
                    outcomes[index] = outcome
        return [o for o in outcomes if o is not None]

    def planned_provider_ids(self, payloads: list[str]) -> list[str | None]:
        """What each message of a mass send will be called in its receipts (`<TaskId>:<To>`), known
        before the call: the dispatcher records it with the claim, so receipts still resolve to our
        messages when the call's answer is lost. None for single sends, whose TaskId is our id."""
        parsed = [json.loads(p) for p in payloads]
        planned: list[str | None] = [None] * len(parsed)
        for chunk in _calls(parsed):
            if len(chunk) > 1:
                task_id = mass_task_id([parsed[i]["TaskId"] for i in chunk])
                for i in chunk:
                    planned[i] = mass_provider_id(task_id, parsed[i]["To"])
        return planned

    async def _send_one(self, session: HttpSession, params: dict[str, Any]) -> SendOutcome:
        outcome, data = await self._call(session, "SendChatappMessage", params)
        if data is None:
            return outcome
        return SendOutcome(kind="sent", provider_message_id=str(data.get("MessageId") or data.get("GroupMessageId")))

    async def _send_mass(self, session: HttpSession, batch: list[dict[str, Any]]) -> list[SendOutcome]:
        task_id = mass_task_id([p["TaskId"] for p in batch])
        params = {k: v for k, v in batch[0].items() if k not in _PER_RECIPIENT and k not in _SINGLE_ONLY}
        params["TaskId"] = task_id
        params["SenderList"] = [{k: p[k] for k in _PER_RECIPIENT if k != "TaskId" and k in p} for p in batch]
        outcome, data = await self._call(session, "SendChatappMassMessage", params)
        if data is None:  # a batch-level answer applies to every recipient of the batch
            return [outcome] * len(batch)
        return [SendOutcome(kind="sent", provider_message_id=mass_provider_id(task_id, p["To"])) for p in batch]

    async def _call(
        self, session: HttpSession, action: str, params: dict[str, Any]
    ) -> tuple[SendOutcome, dict[str, Any] | None]:
        body = encode_form(params)
        headers = sign_request(method="POST", host=self.host, action=action, version=API_VERSION,
                               access_key_id=self._key_id, access_key_secret=self._key_secret, body=body)
        headers["content-type"] = "application/x-www-form-urlencoded"
        try:
            response = await session.post(self.url, content=body, headers=headers)
        except Exception as exc:  # translated at the edge, never leaks into the dispatcher
            # A timeout after the call left may have sent it: `unknown`, settled from receipts (which
            # name our TaskId, or the mass send's planned ids) before any resend.
            return classify_exception(exc), None
        return classify(response.status_code, response.content)


def _calls(parsed: list[dict[str, Any]]) -> list[list[int]]:
    """The provider calls a batch goes out as, by index: same-shaped messages (all but the
    recipient's own fields equal) share mass sends of up to MAX_MASS; a lone one is a single send."""
    groups: dict[str, list[int]] = {}
    singles: list[list[int]] = []
    for index, params in enumerate(parsed):
        if params.get("Type") != "template":  # free-form messages have no mass send
            singles.append([index])
            continue
        shared = {k: v for k, v in params.items() if k not in _PER_RECIPIENT}
        groups.setdefault(json.dumps(shared, sort_keys=True), []).append(index)
    return singles + [indices[start : start + MAX_MASS] for indices in groups.values()
                      for start in range(0, len(indices), MAX_MASS)]


def encode_form(params: dict[str, Any]) -> bytes:
    """The form body: complex values (TemplateParams, SenderList) as JSON strings, as Alibaba's SDKs send them."""
    flat = {k: v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, separators=(",", ":"))
            for k, v in params.items()}
    return urllib.parse.urlencode(flat, quote_via=lambda s, *_: percent_encode(str(s))).encode("ascii")


def from_spec(spec: CampaignSpec, base_url: str | None, sender: str | None = None) -> ChatAppChannel:
    """`provider.options`: channel_type (required), cust_space_id, template_code, viber_ttl_s,
    mass_send (default false), fallback_id / fallback_content / fallback_duration_s / fallback_rule.

    Without mass_send every message is its own SendChatappMessage whose TaskId is our message id,
    so each receipt names its message. With mass_send, up to 1,000 recipients share one
    SendChatappMassMessage call (and one TaskId): far fewer calls, receipts matched by TaskId + To.
    """
    env, options = ChatAppChannel.credentials, spec.provider.options
    check_media(spec.template)
    ttl = options.get("viber_ttl_s")
    channel = ChatAppChannel(
        base_url=base_url or spec.provider.base_url or DEFAULT_BASE_URL,
        access_key_id=spec.secret("access_key_id", env["access_key_id"]),
        access_key_secret=spec.secret("access_key_secret", env["access_key_secret"]),
        channel_type=str(options.get("channel_type", "")),
        sender=sender or spec.sender,
        cust_space_id=options.get("cust_space_id"),
        template_code=options.get("template_code"),
        viber_ttl_s=int(ttl) if ttl is not None else None,
        fallback=fallback_parameters(options),
    )
    channel.max_batch = MAX_MASS if options.get("mass_send") else 1
    return channel
