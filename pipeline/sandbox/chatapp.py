"""A loopback stand-in for Alibaba ChatApp (`cams` 2020-06-06) `SendChatappMessage` / `SendChatappMassMessage`:
ACS3-HMAC-SHA256 verified with its own code (not the client's), Alibaba's error bodies (signature,
Throttling.User, Missing*/InvalidParameter.*), a seeded fate per recipient and ChatAppStatus pushes
(JSON arrays) carrying our shared `X-Campaign-Token`."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import random
import re
import time
import urllib.parse
import uuid
from collections import deque
from datetime import UTC, datetime
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pipeline.records import Category
from pipeline.sandbox.chatapp_params import SENDER_LIST_ITEM, missing_variables, unknown_parameters, value_problems
from pipeline.sandbox.common import Ledger, delays, fate_for
from pipeline.sandbox.kit import PosterSettings, Throttle
from pipeline.sandbox.whatsapp_templates import SandboxNumber, SandboxTemplate

VERSION = "2020-06-06"
SEND_ACTIONS = frozenset({"SendChatappMessage", "SendChatappMassMessage"})
# Templates and numbers (docs/providers.md §3.8), served from the configured set (sandbox/whatsapp_templates.py).
MANAGE_ACTIONS = frozenset({"ListChatappTemplate", "GetChatappTemplateDetail", "QueryChatappPhoneNumbers",
                            "CreateChatappTemplate", "ModifyChatappTemplate"})
ACTIONS = SEND_ACTIONS | MANAGE_ACTIONS
CHANNEL_TYPES = frozenset({"whatsapp", "viber", "messenger", "instagram", "telegram", "line"})
REQUIRED_SIGNED = ("host", "x-acs-action", "x-acs-content-sha256", "x-acs-date", "x-acs-signature-nonce",
                   "x-acs-version")
MAX_SKEW_S = 15 * 60
_AUTH = re.compile(r"ACS3-HMAC-SHA256 Credential=([^,]+),SignedHeaders=([^,]+),Signature=([0-9a-f]{64})")
# Upstream failure codes a Failed report carries, by channel (Meta's for WhatsApp, §3.5).
FAILURE_CODES = {"whatsapp": ("131026", "131049", "131047"), "viber": ("11", "5"), "messenger": ("551",),
                 "instagram": ("551",)}


class ChatAppSandboxConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    access_key_id: str = Field(min_length=1)
    access_key_secret: str = Field(min_length=1)
    callback_token: str = Field(min_length=1, description="sent as X-Campaign-Token on every status push")
    webhook_url: str | None = None
    throughput_per_s: float = Field(default=250.0, gt=0, description="API calls per second per AccessKey")
    fail_rate: float = Field(default=0.04, ge=0, le=1)
    read_rate: float = Field(default=0.6, ge=0, le=1)
    invalid_recipients: frozenset[str] = Field(default=frozenset(), description="answered PhoneNumberError")
    templates: dict[str, Category] | None = Field(default=None, description="ConversationType by template name")
    malformed: bool = Field(default=False, description="answer every call with an HTML page (a broken proxy)")
    webhook_delay_s: tuple[float, float] = (0.05, 0.3)
    webhook_batch: int = Field(default=50, ge=1, le=1000)
    webhook_retry_base_s: float = Field(default=0.2, gt=0)
    webhook_retry_max_s: float = Field(default=10.0, gt=0)
    seed: int = 0
    template_set: list[SandboxTemplate] = Field(default_factory=list)
    phone_numbers: list[SandboxNumber] = Field(default_factory=list)
    waba_id: str = "9099999990123"  # named in ChatAppAudit pushes


class _Refused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        self.status, self.code, self.message = status, code, message


def _pct(value: str) -> str:
    return urllib.parse.quote(value, safe="-_.~")


class ChatAppSandbox:
    def __init__(self, config: ChatAppSandboxConfig) -> None:
        self.config = config
        self._throttle = Throttle(config.throughput_per_s)
        self._rng = random.Random(config.seed)
        self._ids = itertools.count(1)
        self._nonces: dict[str, float] = {}
        # The last requests as received (action, parameters), for tests that check them against the SDK.
        self.requests: deque[tuple[str, dict[str, str]]] = deque(maxlen=1000)
        settings = PosterSettings(batch=config.webhook_batch, retry_base_s=config.webhook_retry_base_s,
                                  retry_max_s=config.webhook_retry_max_s)
        self.ledger = Ledger("Throttling.User", config.webhook_url, self._render, settings)
        self.templates: dict[str, dict[str, Any]] = {
            f"{744000000000 + i}": {"code": f"{744000000000 + i}", **t.model_dump()}
            for i, t in enumerate(config.template_set)}

    def _render(self, _url: str, reports: list[dict[str, Any]]) -> tuple[bytes, dict[str, str]]:
        body = json.dumps(reports, separators=(",", ":"), ensure_ascii=False).encode()
        return body, {"Content-Type": "application/json", "X-Campaign-Token": self.config.callback_token}

    async def call(self, request: Request) -> Response:
        request_id = str(uuid.uuid4()).upper()
        try:
            body = await request.body()
            action = self._authenticate(request, body)
            if not self._throttle.allow(self.config.access_key_id):
                raise _Refused(429, "Throttling.User", "Request was denied due to user flow control.")
            if self.config.malformed:
                return Response("<html><body>502 Bad Gateway</body></html>", media_type="text/html")
            params = dict(urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True))
            params.update(request.query_params)
            unknown = unknown_parameters(action, params)
            if unknown:  # stricter than Alibaba, which may ignore them: what the SDK's model lacks is a bug here
                raise _Refused(400, "InvalidParameter", f"{action} takes no parameter {', '.join(unknown)}.")
            self.requests.append((action, params))
            answer = self._manage(action, params) if action in MANAGE_ACTIONS else self._send(action, params)
        except _Refused as refused:
            self.ledger.rejected[refused.code] += 1
            return JSONResponse({"RequestId": request_id, "Code": refused.code, "Message": refused.message,
                                 "HostId": request.headers.get("host", "")}, status_code=refused.status)
        return JSONResponse({"RequestId": request_id, "Code": "OK", "Message": "SUCCESS", **answer})

    # ------------------------------------------------------------------ ACS3, verified independently

    def _authenticate(self, request: Request, body: bytes) -> str:
        match = _AUTH.fullmatch(request.headers.get("authorization", "").strip())
        if not match:
            raise _Refused(400, "IncompleteSignature", "The request signature does not conform to Aliyun standards.")
        key_id, signed, received = match.groups()
        if key_id != self.config.access_key_id:
            raise _Refused(404, "InvalidAccessKeyId.NotFound", "Specified access key is not found.")
        names = signed.split(";")
        if any(name not in names for name in REQUIRED_SIGNED) or names != sorted(names):
            raise _Refused(400, "IncompleteSignature", "SignedHeaders must list host and the x-acs-* headers, sorted.")
        headers = request.headers
        if any(name not in headers for name in names):
            raise _Refused(400, "IncompleteSignature", "A signed header is missing from the request.")
        if headers["x-acs-content-sha256"] != hashlib.sha256(body).hexdigest():
            raise _Refused(400, "IncompleteSignature", "x-acs-content-sha256 does not match the request body.")
        try:
            signed_at = datetime.strptime(headers["x-acs-date"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        except ValueError:
            raise _Refused(400, "InvalidTimeStamp.Format", "Specified x-acs-date is not valid.") from None
        if abs(time.time() - signed_at.timestamp()) > MAX_SKEW_S:
            raise _Refused(400, "InvalidTimeStamp.Expired", "Specified time stamp or date value is expired.")
        pairs = sorted((_pct(k), _pct(v)) for k, v in request.query_params.multi_items())
        query = "&".join(f"{k}={v}" for k, v in pairs)
        lines = [request.method, _pct(request.url.path).replace("%2F", "/") or "/", query,
                 "".join(f"{name}:{headers[name].strip()}\n" for name in names), signed,
                 headers["x-acs-content-sha256"]]
        digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()
        expected = hmac.new(self.config.access_key_secret.encode(), f"ACS3-HMAC-SHA256\n{digest}".encode(),
                            hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, received):
            raise _Refused(400, "SignatureDoesNotMatch", "Specified signature is not matched with our calculation.")
        nonce, now = headers["x-acs-signature-nonce"], time.time()
        if self._nonces.get(nonce, 0) > now - MAX_SKEW_S:
            raise _Refused(400, "SignatureNonceUsed", "Specified signature nonce was used already.")
        if len(self._nonces) > 100_000:  # bounded: nonces older than the allowed skew cannot be replayed
            self._nonces = {n: t for n, t in self._nonces.items() if t > now - MAX_SKEW_S}
        self._nonces[nonce] = now
        if headers["x-acs-version"] != VERSION:
            raise _Refused(400, "InvalidVersion", "Specified parameter Version is not valid.")
        if headers["x-acs-action"] not in ACTIONS:
            raise _Refused(404, "InvalidAction.NotFound", "Specified api is not found, please check your url.")
        return headers["x-acs-action"]

    # ------------------------------------------------------------------ templates and numbers

    _AUDIT = {"APPROVED": "pass", "REJECTED": "fail", "PENDING": "auditing", "PAUSED": "unaudit",
              "DISABLED": "fail"}

    # ChatAppAudit's review statuses (docs/providers.md §3.8): the push names paused and disabled as they are.
    _AUDIT_PUSH = {"APPROVED": "pass", "REJECTED": "fail", "PENDING": "auditing", "PAUSED": "paused",
                   "DISABLED": "disabled"}

    async def control_template(self, request: Request) -> JSONResponse:
        """Tests change a template's status by its TemplateCode; the sandbox pushes a ChatAppAudit report (V1) to
        the callback URL, with the callback token, until the receiver acknowledges it (at most 30 s)."""
        body = json.loads(await request.body())
        t = self.templates.get(request.path_params["code"])
        if t is None or str(body.get("status", "")).upper() not in self._AUDIT_PUSH:
            return JSONResponse({"error": "no such template, or no status it can take"}, 404)
        t["status"] = str(body["status"]).upper()
        report = [{"WabaId": self.config.waba_id, "TemplateCode": t["code"], "Language": t["language"],
                   "AuditStatus": self._AUDIT_PUSH[t["status"]], "Reason": str(body.get("reason", ""))}]
        raw, headers = self._render(self.config.webhook_url or "", report)
        deadline, posted = time.monotonic() + 30, False
        async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
            while self.config.webhook_url and not posted and time.monotonic() < deadline:
                try:
                    answer = await client.post(self.config.webhook_url, content=raw, headers=headers)
                    posted = answer.status_code == 200
                except httpx.HTTPError:
                    posted = False
                if not posted:
                    await asyncio.sleep(0.1)
        return JSONResponse({**t, "posted": posted})

    def _manage(self, action: str, params: dict[str, str]) -> dict[str, Any]:
        templates = self.templates
        if action == "ListChatappTemplate":
            page = self._json(params.get("Page") or '{"Index":1,"Size":10}', dict, "Page")
            index, size = int(page.get("Index", 1)), int(page.get("Size", 10))
            if not 1 <= size <= 100 or index < 1:
                raise _Refused(400, "InvalidParameter.PageInvalid", "Page.Size must be 1 to 100.")
            rows = [{"TemplateCode": t["code"], "TemplateName": t["name"], "Language": t["language"],
                     "Category": t["category"], "AuditStatus": self._AUDIT.get(t["status"], "auditing"),
                     "TemplateType": "WHATSAPP"} for t in templates.values()]
            return {"ListTemplate": rows[(index - 1) * size:index * size], "Total": len(rows)}
        if action == "GetChatappTemplateDetail":
            t = templates.get(params.get("TemplateCode", ""))
            if t is None:
                raise _Refused(400, "DetailError.TemplateNotExist", "The template does not exist.")
            components = [{"Type": c.get("type", "").upper(), **({"Format": c["format"]} if c.get("format") else {}),
                           **({"Text": c["text"]} if "text" in c else {}),
                           **({"Buttons": [{k.capitalize(): v for k, v in b.items()} for b in c["buttons"]]}
                              if c.get("buttons") else {})} for c in t["components"]]
            return {"Data": {"TemplateCode": t["code"], "Name": t["name"], "Language": t["language"],
                             "Category": t["category"], "AuditStatus": self._AUDIT.get(t["status"], "auditing"),
                             "QualityScore": t["quality"], "Components": components}}
        if action == "QueryChatappPhoneNumbers":
            return {"PhoneNumbers": [{"PhoneNumber": n.display_phone_number, "VerifiedName": n.verified_name,
                                      "Status": n.status, "QualityRating": n.quality_rating,
                                      "MessagingLimitTier": n.messaging_limit_tier,
                                      "CodeVerificationStatus": n.code_verification_status}
                                     for n in self.config.phone_numbers]}
        components = self._json(params.get("Components") or "[]", list, "Components")
        if action == "CreateChatappTemplate":
            if any(t["name"] == params.get("Name") and t["language"] == params.get("Language")
                   for t in templates.values()):
                raise _Refused(400, "InvalidParameter.TemplateNameExist", "The template name already exists.")
            code = f"{744000000000 + len(templates)}"
            templates[code] = {"code": code, "name": params.get("Name"), "language": params.get("Language"),
                               "category": params.get("Category"), "status": "PENDING", "quality": "UNKNOWN",
                               "components": [{k.lower(): v for k, v in c.items()} for c in components]}
            return {"Data": {"TemplateCode": code, "TemplateName": params.get("Name")}}
        t = templates.get(params.get("TemplateCode", ""))
        if t is None:
            raise _Refused(400, "DetailError.TemplateNotExist", "The template does not exist.")
        t["components"], t["status"] = [{k.lower(): v for k, v in c.items()} for c in components], "PENDING"
        return {"Data": {"TemplateCode": t["code"], "TemplateName": t["name"]}}

    # ------------------------------------------------------------------ the send

    def _send(self, action: str, params: dict[str, str]) -> dict[str, Any]:
        mass = action == "SendChatappMassMessage"
        # A mass send is always a template and has no Type (its SDK model lacks it).
        required = ["ChannelType", "From"] + (["SenderList"] if mass else ["Type", "To"])
        for name in required:
            if not params.get(name):
                raise _Refused(400, f"Missing{name}", f"{name} is mandatory for this action.")
        channel = params["ChannelType"]
        if channel not in CHANNEL_TYPES:
            raise _Refused(400, "InvalidParameter", f"ChannelType {channel!r} is not supported.")
        kind = "template" if mass else params["Type"]
        if kind not in ("template", "message"):
            raise _Refused(400, "InvalidParameter", f"Type {kind!r} is not supported.")
        if kind == "template" and not (params.get("TemplateCode") or params.get("TemplateName")):
            raise _Refused(400, "MissingTemplateCode", "TemplateCode or TemplateName is mandatory for a template.")
        for name in ("MessageType", "Content") if kind == "message" else ():
            if not params.get(name):
                raise _Refused(400, f"Missing{name}", f"{name} is mandatory for a free-form message.")
        if mass:
            recipients = self._json(params["SenderList"], list, "SenderList")
            if not 1 <= len(recipients) <= 1000 or not all(isinstance(r, dict) and r.get("To") for r in recipients):
                raise _Refused(400, "InvalidParameter", "SenderList must hold 1 to 1000 items, each with To.")
            for item in recipients:
                extra = sorted(set(item) - SENDER_LIST_ITEM)
                if extra:
                    raise _Refused(400, "InvalidParameter", f"SenderList items take no {', '.join(extra)}.")
                self._check_variables(params, item.get("TemplateParams") or {})
        else:
            values = self._json(params.get("TemplateParams") or "{}", dict, "TemplateParams")
            if kind == "template":
                self._check_variables(params, values)
            if params["To"] in self.config.invalid_recipients:
                raise _Refused(200, "InvalidParameter.PhoneNumberError", "The phone number is invalid.")
            recipients = [{"To": params["To"]}]
        params = {**params, "Type": kind}
        self.ledger.calls += 1
        task_id = params.get("TaskId")
        message_ids = [self._accept(channel, params, str(r["To"]), task_id, mass) for r in recipients]
        if mass:
            return {"GroupMessageId": f"{8900000100020000 + next(self._ids)}"}
        return {"MessageId": message_ids[0]}

    def _check_variables(self, params: dict[str, str], values: Any) -> None:
        problems = value_problems(values)
        if problems:
            raise _Refused(400, "InvalidParameter.TemplateParams", f"TemplateParams: {'; '.join(problems)}.")
        missing = missing_variables(self.templates.values(), params, values)
        if missing:
            raise _Refused(400, "InvalidParameter.TemplateParams", f"TemplateParams lacks {', '.join(missing)}.")

    @staticmethod
    def _json(raw: str, kind: type, name: str) -> Any:
        try:
            value = json.loads(raw)
        except ValueError:
            value = None
        if not isinstance(value, kind):
            raise _Refused(400, "InvalidParameter", f"{name} must be a JSON {kind.__name__}.")
        return value

    def _accept(self, channel: str, params: dict[str, str], to: str, task_id: str | None, mass: bool) -> str:
        message_id = f"{uuid.UUID(int=self._rng.getrandbits(128)).hex[:24]}"
        invalid = to in self.config.invalid_recipients  # in a mass send: accepted, then reported Failed
        fate = fate_for(self.config.seed, to, fail_rate=self.config.fail_rate, read_rate=self.config.read_rate)
        final = "failed" if invalid else fate.final
        codes = FAILURE_CODES.get(channel, ("131026",))
        error = None
        if invalid:
            error = "InvalidParameter.PhoneNumberError"
        elif final == "failed":
            error = codes[int(fate.pick * len(codes))]
        key = f"{task_id}:{to}" if mass and task_id else task_id
        self.ledger.accept(message_id, to, task_id, final, error, dedupe_key=key, new_call=False)
        if self.ledger.poster:
            name = params.get("TemplateName") or params.get("TemplateCode") or ""
            conversation = (self.config.templates or {}).get(name, "marketing")
            steps = {"failed": ["Sent", "Failed"], "delivered": ["Sent", "Delivered"],
                     "read": ["Sent", "Delivered", "Read"]}[final]
            if invalid:
                steps = ["Failed"]
            now_ms = int(time.time() * 1000)
            for step, offset in zip(steps, delays(len(steps), self.config.webhook_delay_s, self._rng), strict=True):
                report: dict[str, Any] = {
                    "MessageId": message_id, "TaskId": task_id or message_id, "From": params["From"], "To": to,
                    "Status": step, "Timestamp": now_ms + int(offset * 1000), "MsgFrameType": params["Type"],
                    "Type": "TEMPLATE", "ConversationType": conversation,
                    "TemplateName": params.get("TemplateName"), "TemplateCode": params.get("TemplateCode"),
                    "Language": params.get("Language"),
                }
                if step == "Failed":
                    report["ErrorCode"] = error
                    report["ErrorDescription"] = f"{error}:Message undeliverable"
                self.ledger.schedule(offset, report, step)
        return message_id


def create_chatapp_app(config: ChatAppSandboxConfig) -> Starlette:
    """The sandbox as an ASGI app; `app.state.sandbox` gives tests its state (`.ledger`)."""
    sandbox = ChatAppSandbox(config)
    routes = [Route("/", sandbox.call, methods=["POST", "GET"]), *sandbox.ledger.routes(),
              Route("/_sandbox/templates/{code}", sandbox.control_template, methods=["POST"])]
    app = Starlette(routes=routes, lifespan=sandbox.ledger.lifespan)
    app.state.sandbox = sandbox
    return app
