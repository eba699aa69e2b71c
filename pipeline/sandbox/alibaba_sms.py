"""A loopback stand-in for Alibaba Cloud SMS (dysmsapi 2017-05-25): RPC calls at `/` (GET query or POST
form) with the V2 HMAC-SHA1 signature verified by its own code, SendBatchSms (<= 100 numbers) and
SendSms, Alibaba's Code/Message/BizId/RequestId bodies, a QPS limit answering Throttling.User (the gateway's
flow control), a per-number frequency limit answering isv.BUSINESS_LIMIT_CONTROL and a signature + content
over 500 characters answering isv.PARAM_LENGTH_LIMIT (each refusing the whole call, as an illegal number does),
the account's daily and monthly sending limits answering isv.DAY_LIMIT_CONTROL and isv.MONTH_LIMIT_CONTROL, and
SmsReport pushes (JSON arrays) carrying our report token, retried until answered `{"code":0}`."""

from __future__ import annotations

import base64
import contextlib
import hmac
import json
import random
import re
import time
import uuid
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qsl, quote

import httpx
from pydantic import BaseModel, ConfigDict, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from pipeline.sandbox.kit import CallbackPoster, PosterSettings, Tally, Throttle, draws, pick

VERSION = "2017-05-25"
TOKEN_HEADER = "X-Sms-Report-Token"
_BEIJING = timezone(timedelta(hours=8))
_PHONE = re.compile(r"\d{5,20}")
_TEMPLATE = re.compile(r"SMS_\d+")
_VARIABLE = re.compile(r"\$\{(\w+)\}")  # a variable in an Alibaba template text
MAX_CHARS = 500  # signature with its two brackets + content (docs/providers.md §6.1 "Segmentation and billing")
# Carrier failure codes as Alibaba forwards them in reports (a mix; the receipt keeps the code).
REPORT_FAILURES: tuple[tuple[str, float], ...] = (("MN:0001", 0.5), ("MK:0012", 0.3), ("UNDELIV", 0.2))


class AlibabaSmsSandboxConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    access_key_id: str = Field(min_length=1)
    access_key_secret: str = Field(min_length=1)
    report_token: str = Field(min_length=1, description="sent in X-Sms-Report-Token with every SmsReport push")
    webhook_url: str | None = Field(default=None, description="where SmsReport pushes go")
    throughput_per_s: float = Field(default=50.0, gt=0, description="calls per second (Alibaba's QPS per user)")
    sign_names: list[str] | None = Field(default=None, description="approved signatures; None: any")
    templates: list[str] | None = Field(default=None, description="approved template codes; None: any SMS_<n>")
    template_texts: dict[str, str] | None = Field(
        default=None, description="approved template code -> its text with ${name} variables, for the 500-character "
        "bound; a template without one counts its variables' values alone (the least its content can be)")
    day_quota: int | None = Field(
        default=None, ge=0, description="messages the account may send a day (China time), the console's daily "
        "sending limit: a call that would go over it is refused isv.DAY_LIMIT_CONTROL. None: no limit")
    month_quota: int | None = Field(
        default=None, ge=0, description="messages the account may send a calendar month (China time), the console's "
        "monthly sending limit: a call that would go over it is refused isv.MONTH_LIMIT_CONTROL. None: no limit")
    illegal_rate: float = Field(default=0.0, ge=0, le=1, description="numbers refused as illegal")
    number_limit: tuple[int, float] | None = Field(
        default=(50, 86400.0), description="(messages, window s) per number, sign name and template; Alibaba's "
        "notification limit is 50 a day. None: no limit")
    fail_rate: float = Field(default=0.04, ge=0, le=1, description="accepted, then reported undelivered")
    timestamp_tolerance_s: float = 900.0
    report_delay_s: tuple[float, float] = (0.05, 0.3)
    report_batch: int = Field(default=100, ge=1, le=1000)
    report_retry_base_s: float = Field(default=0.2, gt=0)
    report_retry_max_s: float = Field(default=10.0, gt=0)
    seed: int = 0

    def outcome(self, phone: str) -> tuple[str, str | None]:
        """('illegal' | 'failed' | 'delivered', report error code) for every message to `phone`."""
        u = draws(self.seed, "alibaba|" + phone)
        if u[0] < self.illegal_rate:
            return "illegal", None
        if u[1] < self.fail_rate:
            return "failed", pick(u[2], REPORT_FAILURES)
        return "delivered", None


def _pct(value: str) -> str:
    # Written apart from pipeline.channels.alibaba_rpc on purpose: the sandbox checks the channel.
    return quote(value, safe="~")


def expected_signature(method: str, params: dict[str, str], secret: str) -> str:
    pairs = sorted((k, v) for k, v in params.items() if k != "Signature")
    query = "&".join(_pct(k) + "=" + _pct(v) for k, v in pairs)
    text = "&".join([method, _pct("/"), _pct(query)])
    mac = hmac.new((secret + "&").encode(), text.encode(), "sha1").digest()
    return base64.b64encode(mac).decode()


class _NumberLimit:
    """Accepted sends per (number, sign name, template) within a moving window."""

    def __init__(self, limit: tuple[int, float] | None) -> None:
        self.limit = limit
        self._sent: defaultdict[tuple[str, str, str], deque[float]] = defaultdict(deque)

    def check(self, keys: list[tuple[str, str, str]]) -> None:
        if self.limit is None:
            return
        permits, window = self.limit
        now, wanted = time.monotonic(), defaultdict(int)
        for key in keys:
            sent = self._sent[key]
            while sent and now - sent[0] >= window:
                sent.popleft()
            wanted[key] += 1
            if len(sent) + wanted[key] > permits:
                level = "分钟级" if window <= 60 else "小时级" if window <= 3600 else "天级"
                raise _Refused("isv.BUSINESS_LIMIT_CONTROL", f"触发{level}流控Permits:{permits}")

    def record(self, keys: list[tuple[str, str, str]]) -> None:
        if self.limit is not None:
            now = time.monotonic()
            for key in keys:
                self._sent[key].append(now)


class _Quota:
    """Accepted messages of the account in the current day or month, China time (Alibaba's console is in UTC+8)."""

    def __init__(self, quota: int | None, period: str, code: str, message: str) -> None:
        self.quota, self.period, self.code, self.message = quota, period, code, message  # period: a strftime format
        self._current, self._sent = "", 0

    def check(self, count: int) -> None:
        if self.quota is None:
            return
        current = datetime.now(_BEIJING).strftime(self.period)
        if current != self._current:
            self._current, self._sent = current, 0
        if self._sent + count > self.quota:
            raise _Refused(self.code, self.message)

    def record(self, count: int) -> None:
        self._sent += count

    def reset(self) -> None:
        self._sent = 0


def _content(text: str | None, template_param: Any) -> str:
    """The message as Alibaba builds it: the template's text with its variables filled in; without the text, the
    variables' values alone."""
    if isinstance(template_param, str):  # SendSms passes TemplateParam as it came
        try:
            template_param = json.loads(template_param)
        except ValueError:
            raise _Refused("isv.INVALID_JSON_PARAM", "TemplateParam is not valid JSON.") from None
    values = {str(k): str(v) for k, v in template_param.items()} if isinstance(template_param, dict) else {}
    if text is None:
        return "".join(values.values())
    return _VARIABLE.sub(lambda m: values.get(m.group(1), ""), text)


class _Refused(Exception):
    def __init__(self, code: str, message: str, status: int = 200) -> None:
        self.code, self.message, self.status = code, message, status


def _report_accepted(response: httpx.Response) -> bool:
    """Alibaba checks only the numeric `code` of a 200 answer."""
    if response.status_code != 200:
        return False
    try:
        return response.json().get("code") == 0
    except (ValueError, AttributeError):
        return False


class AlibabaSmsSandbox:
    def __init__(self, config: AlibabaSmsSandboxConfig) -> None:
        self.config = config
        self._throttle = Throttle(config.throughput_per_s)
        self._rng = random.Random(config.seed)
        self._nonces: dict[str, float] = {}
        self.tally = Tally(throttle_code="Throttling.User")
        self._number_limit = _NumberLimit(config.number_limit)
        # The month first (Alibaba documents no order): a call over both is refused for the limit that frees later.
        self._quotas = (_Quota(config.month_quota, "%Y-%m", "isv.MONTH_LIMIT_CONTROL", "触发月发送限额"),
                        _Quota(config.day_quota, "%Y-%m-%d", "isv.DAY_LIMIT_CONTROL", "触发日发送限额"))
        self.calls = 0
        token = config.report_token

        def render(url: str, reports: list[Any]) -> tuple[bytes, dict[str, str]]:
            body = json.dumps(reports, ensure_ascii=False, separators=(",", ":")).encode()
            return body, {"Content-Type": "application/json", TOKEN_HEADER: token}

        self.poster = CallbackPoster(render, PosterSettings(
            batch=config.report_batch, retry_base_s=config.report_retry_base_s,
            retry_max_s=config.report_retry_max_s), accept=_report_accepted)

    def reset_quotas(self) -> None:
        """As at midnight (and on the 1st) China time: the day's and the month's counts start again (tests)."""
        for quota in self._quotas:
            quota.reset()

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        async with self.poster.running():
            yield

    async def rpc(self, request: Request) -> JSONResponse:
        request_id = str(uuid.uuid4()).upper()
        self.calls += 1
        try:
            params = dict(request.query_params)
            if request.method == "POST":
                params.update(parse_qsl((await request.body()).decode("utf-8"), keep_blank_values=True))
            self._check_common(request.method, params)
            if not self._throttle.allow(self.config.access_key_id):
                raise _Refused("Throttling.User", "Request was denied due to user flow control.", 400)
            body = self._send(params, request_id)
        except _Refused as refused:
            self.tally.rejected[refused.code] += 1
            body = {"RequestId": request_id, "Code": refused.code, "Message": refused.message}
            if refused.status != 200:
                body["HostId"] = "dysmsapi.aliyuncs.com"
                body["Recommend"] = f"https://api.aliyun.com/troubleshoot?q={refused.code}&product=Dysmsapi"
            return JSONResponse(body, status_code=refused.status)
        except UnicodeDecodeError:
            return JSONResponse({"RequestId": request_id, "Code": "InvalidParameter",
                                 "Message": "The request body is not UTF-8."}, status_code=400)
        return JSONResponse(body)

    def _check_common(self, method: str, params: dict[str, str]) -> None:
        for name in ("AccessKeyId", "Signature", "SignatureNonce", "Timestamp", "Action", "Version"):
            if not params.get(name):
                raise _Refused(f"Missing{name}", f"{name} is mandatory for this action.", 400)
        if params["AccessKeyId"] != self.config.access_key_id:
            raise _Refused("InvalidAccessKeyId.NotFound", "Specified access key is not found.", 404)
        if params.get("SignatureMethod") != "HMAC-SHA1" or params.get("SignatureVersion") != "1.0":
            raise _Refused("InvalidParameter", "SignatureMethod must be HMAC-SHA1 and SignatureVersion 1.0.", 400)
        expected = expected_signature(method, params, self.config.access_key_secret)
        if not hmac.compare_digest(expected.encode(), params["Signature"].encode()):
            raise _Refused("SignatureDoesNotMatch", "Specified signature is not matched with our calculation.", 400)
        try:
            stamp = datetime.strptime(params["Timestamp"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        except ValueError:
            raise _Refused("InvalidTimeStamp.Format", "Specified time stamp or date value is not well formatted.",
                           400) from None
        if abs((datetime.now(UTC) - stamp).total_seconds()) > self.config.timestamp_tolerance_s:
            raise _Refused("InvalidTimeStamp.Expired", "Specified time stamp or date value is expired.", 400)
        now = time.monotonic()
        self._nonces = {n: t for n, t in self._nonces.items() if now - t < self.config.timestamp_tolerance_s}
        if params["SignatureNonce"] in self._nonces:
            raise _Refused("SignatureNonceUsed", "Specified signature nonce was used already.", 400)
        self._nonces[params["SignatureNonce"]] = now
        if params["Version"] != VERSION:
            raise _Refused("InvalidVersion", "Specified parameter Version is not valid.", 400)
        if params["Action"] not in ("SendBatchSms", "SendSms"):
            raise _Refused("InvalidAction.NotFound", "Specified api is not found, please check your url and method.",
                           404)

    def _send(self, params: dict[str, str], request_id: str) -> dict[str, Any]:
        phones, sign_names, template_params = self._numbers(params)
        template = params.get("TemplateCode", "")
        if not _TEMPLATE.fullmatch(template) or (self.config.templates is not None
                                                 and template not in self.config.templates):
            raise _Refused("isv.SMS_TEMPLATE_ILLEGAL", "The SMS template is illegal or not approved.")
        for sign_name in sign_names:
            if not sign_name or (self.config.sign_names is not None and sign_name not in self.config.sign_names):
                raise _Refused("isv.SMS_SIGNATURE_ILLEGAL", "The SMS signature is illegal or not approved.")
        fates = [self.config.outcome(phone) for phone in phones]
        # One bad number refuses the whole call: nothing of it is sent.
        if any(not _PHONE.fullmatch(p) for p in phones) or any(f[0] == "illegal" for f in fates):
            raise _Refused("isv.MOBILE_NUMBER_ILLEGAL", "Illegal mobile number.")
        out_id = params.get("OutId")
        if out_id is not None and len(out_id) >= 256:
            raise _Refused("isv.INVALID_PARAMETERS", "OutId must be shorter than 256 characters.")
        text = (self.config.template_texts or {}).get(template)
        for sign_name, params_ in zip(sign_names, template_params, strict=True):
            length = len(sign_name) + 2 + len(_content(text, params_))  # 【】 or [] around the signature
            if length > MAX_CHARS:  # one message too long refuses the whole call
                raise _Refused("isv.PARAM_LENGTH_LIMIT",
                               f"参数超出长度限制 (signature and content: {length} characters, over {MAX_CHARS})")
        for quota in self._quotas:  # the whole call, when it would take the day or the month over its limit
            quota.check(len(phones))
        limit_keys = [(phone, sign_name, template) for phone, sign_name in zip(phones, sign_names, strict=True)]
        self._number_limit.check(limit_keys)  # one number over its limit refuses the whole call
        self._number_limit.record(limit_keys)
        for quota in self._quotas:
            quota.record(len(phones))
        biz_id = f"{int(time.time() * 1000) % 10**12:012d}{self._rng.randrange(10**6):06d}^0"
        sent_at = datetime.now(_BEIJING)
        for phone, (final, error), params_ in zip(phones, fates, template_params, strict=True):
            self.tally.accepted += 1
            self.tally.correlation(f"{out_id}|{phone}" if out_id else None)
            self.tally.messages.append({"id": biz_id, "to": phone, "correlation_id": out_id, "outcome": final,
                                        "error_code": error, "template_param": params_})
            if self.config.webhook_url:
                delay = self._rng.uniform(*self.config.report_delay_s)
                report = {
                    "phone_number": phone, "send_time": sent_at.strftime("%Y-%m-%d %H:%M:%S"),
                    "report_time": (sent_at + timedelta(seconds=delay)).strftime("%Y-%m-%d %H:%M:%S"),
                    "success": final == "delivered", "err_code": error or "DELIVERED",
                    "err_msg": "用户接收成功" if final == "delivered" else "用户接收失败", "sms_size": "1",
                    "biz_id": biz_id, "out_id": out_id or "",
                }
                self.poster.schedule(delay, self.config.webhook_url, report, label=final)
        return {"Code": "OK", "Message": "OK", "BizId": biz_id, "RequestId": request_id}

    @staticmethod
    def _numbers(params: dict[str, str]) -> tuple[list[str], list[str], list[Any]]:
        """(numbers, a sign name per number, template params per number) of either action."""
        if params["Action"] == "SendSms":
            phones = [p.strip() for p in params.get("PhoneNumbers", "").split(",") if p.strip()]
            if not phones or len(phones) > 1000:
                raise _Refused("isv.MOBILE_COUNT_OVER_LIMIT", "PhoneNumbers takes 1 to 1000 numbers.")
            return phones, [params.get("SignName", "")] * len(phones), [params.get("TemplateParam")] * len(phones)
        try:
            phones = json.loads(params.get("PhoneNumberJson", ""))
            sign_names = json.loads(params.get("SignNameJson", ""))
            template_params = json.loads(params["TemplateParamJson"]) if "TemplateParamJson" in params else None
        except ValueError:
            raise _Refused("isv.INVALID_JSON_PARAM", "A JSON parameter is not valid JSON.") from None
        if not isinstance(phones, list) or not phones or not all(isinstance(p, str) for p in phones):
            raise _Refused("isv.INVALID_JSON_PARAM", "PhoneNumberJson must be a JSON array of strings.")
        if len(phones) > 100:
            raise _Refused("isv.MOBILE_COUNT_OVER_LIMIT", "SendBatchSms takes at most 100 numbers.")
        if not isinstance(sign_names, list) or len(sign_names) != len(phones):
            raise _Refused("isv.INVALID_PARAMETERS", "SignNameJson must give one sign name per number.")
        if template_params is None:
            template_params = [None] * len(phones)
        elif not isinstance(template_params, list) or len(template_params) != len(phones):
            raise _Refused("isv.INVALID_PARAMETERS", "TemplateParamJson must give one object per number.")
        return phones, [str(s) for s in sign_names], template_params

    async def stats(self, request: Request) -> JSONResponse:
        with_messages = request.query_params.get("messages", "1").lower() not in ("0", "false", "no")
        return JSONResponse({"calls": self.calls, **self.tally.snapshot(self.poster, with_messages)})

    async def drain(self, request: Request) -> JSONResponse:
        """Waits (up to `?timeout=` seconds, default 30) until every report is acknowledged."""
        try:
            timeout = float(request.query_params.get("timeout", "30"))
        except ValueError:
            return JSONResponse({"Code": "InvalidParameter", "Message": "timeout must be a number"}, 400)
        drained = await self.poster.drain(timeout)
        return JSONResponse({"drained": drained, **self.tally.snapshot(self.poster, with_messages=False)})


def create_alibaba_sms_app(config: AlibabaSmsSandboxConfig) -> Starlette:
    """The sandbox as an ASGI app; `app.state.sandbox` gives tests direct access to its state."""
    sandbox = AlibabaSmsSandbox(config)
    routes = [
        Route("/", sandbox.rpc, methods=["GET", "POST"]),
        Route("/_sandbox/stats", sandbox.stats, methods=["GET"]),
        Route("/_sandbox/drain", sandbox.drain, methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=sandbox.lifespan)
    app.state.sandbox = sandbox
    return app
