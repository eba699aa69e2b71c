"""Alibaba Cloud SMS (dysmsapi 2017-05-25): SendBatchSms, up to 100 numbers a call, V2-signed; and the
classification of its answers (docs/providers.md §6.1).

One outbox payload per message; `send` groups a batch by template into SendBatchSms calls. The call's
OutId is the message id of its first message and each sent message records "<BizId>:<phone>", which is
how SmsReport receipts find their messages (see `alibaba_sms_webhooks`). Billed per segment.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from pipeline.channels.alibaba_rpc import encode_form, signed_params
from pipeline.channels.alibaba_sms_webhooks import CHINA_TIME, provider_message_id
from pipeline.channels.base import HttpChannel, HttpSession, Outgoing, SendOutcome, retry_after_s
from pipeline.render.segments import count_segments
from pipeline.spec import CampaignSpec, SpecError

VERSION = "2017-05-25"
DEFAULT_BASE_URL = "https://dysmsapi.aliyuncs.com"
MAX_NUMBERS = 100  # SendBatchSms's documented limit

# The account's call rate (QPS): slow the sender down.
THROTTLE_CODES = frozenset({"Throttling.User", "Throttling", "Throttling.Api"})
RETRYABLE_CODES = frozenset({"isp.SYSTEM_ERROR", "isp.GATEWAY_ERROR", "ServiceUnavailable", "InternalError",
                             "SignatureNonceUsed"}) | THROTTLE_CODES
# Account, key, signature or template problems: every further call would fail the same way.
STOP_CODES = frozenset({
    "isv.ACCOUNT_NOT_EXISTS", "isv.ACCOUNT_ABNORMAL", "isv.OUT_OF_SERVICE", "isv.AMOUNT_NOT_ENOUGH",
    "InvalidAccessKeyId.NotFound", "InvalidAccessKeyId.Inactive", "SignatureDoesNotMatch",
    "InvalidTimeStamp.Expired",  # we sign just before sending, so this is a skewed clock
    "isv.SMS_SIGNATURE_ILLEGAL", "isv.SMS_TEMPLATE_ILLEGAL", "Forbidden.RAM", "isp.RAM_PERMISSION_DENY",
})
# Codes about one number of the call. Alibaba refuses the whole call for it, so nothing was sent:
# `send` splits the batch to find the number(s) and sends the rest. isv.PARAM_LENGTH_LIMIT is one message's
# variables making it too long (signature + text over 500 characters, docs/providers.md §6.1 "Segmentation").
PER_NUMBER_CODES = frozenset({"isv.MOBILE_NUMBER_ILLEGAL", "isv.BUSINESS_LIMIT_CONTROL", "isv.PARAM_LENGTH_LIMIT"})
# isv.DAY_LIMIT_CONTROL is no number's limit (those are "Mainland frequency limits", answered
# isv.BUSINESS_LIMIT_CONTROL): docs/providers.md §6.1 "Error codes of the account's limits", from Alibaba's API error
# codes (help.aliyun.com/zh/sms/developer-reference/api-error-codes): 触发日发送限额, the account's daily sending limit
# set in the SMS console (安全设置, 日发送量总量阈值).
# Every further call today is refused the same way, so the channel stops (no halving, no retries) and the
# refused messages are held back until the next day, when the campaign continues. Assumption: the day is China
# Standard Time (UTC+8), the zone of Alibaba's console and of its SmsReport times (docs/providers.md §6.1 names no
# reset time).
DAY_LIMIT_CODE = "isv.DAY_LIMIT_CONTROL"
# isv.MONTH_LIMIT_CONTROL is the same for the month: 触发月发送限额, the console's monthly sending limit (same page,
# 月发送量限额), so it stops the channel and holds the refused messages back as the day's limit does. Assumption: the
# month is the calendar month in China Standard Time, counted from zero at 00:00 UTC+8 on the 1st (neither the
# error-code page nor docs/providers.md §6.1 names a reset time). Counted otherwise, a message held back too little
# meets the same stop and is held back again, one held too long waits longer than it had to: neither is sent over
# the limit.
MONTH_LIMIT_CODE = "isv.MONTH_LIMIT_CONTROL"
# isv.BUSINESS_LIMIT_CONTROL is Alibaba's per-number frequency limit (docs/providers.md §6.1: verification
# codes 1/min, 5/h, 10/day; notifications and promotions 50/day per number, signature and template), never
# the sender's pace: that number waits (a day unless the message names the minute or hour window), the
# others go on and the sender keeps its rate.
NUMBER_LIMIT_CODE = "isv.BUSINESS_LIMIT_CONTROL"
NUMBER_LIMIT_WAITS_S = (("分钟", 60.0), ("minute", 60.0), ("小时", 3600.0), ("hour", 3600.0))
NUMBER_LIMIT_DEFAULT_S = 24 * 3600.0


def day_limit_resets_at(now: datetime) -> datetime:
    """The next midnight China time (UTC+8), in UTC: when Alibaba's daily sending limit counts from zero again."""
    tomorrow = now.astimezone(CHINA_TIME).date() + timedelta(days=1)
    return datetime.combine(tomorrow, time(0), tzinfo=CHINA_TIME).astimezone(UTC)


def month_limit_resets_at(now: datetime) -> datetime:
    """00:00 China time (UTC+8) on the 1st of the next month, in UTC: when the monthly sending limit starts again."""
    today = now.astimezone(CHINA_TIME).date()
    first = date(today.year + 1, 1, 1) if today.month == 12 else date(today.year, today.month + 1, 1)
    return datetime.combine(first, time(0), tzinfo=CHINA_TIME).astimezone(UTC)


# The account's sending limits: code -> (which, when it counts from zero again, that time in words).
QUOTA_LIMITS = {
    DAY_LIMIT_CODE: ("daily", day_limit_resets_at, "midnight China time"),
    MONTH_LIMIT_CODE: ("monthly", month_limit_resets_at, "00:00 China time on the 1st"),
}


def alibaba_segments(sign_name: str, text: str, country: str | None) -> int:
    """Parts as Alibaba bills them: the signature with its brackets counts; mainland China is
    70 single / 67 per part whatever the characters, elsewhere GSM-7 160/153 or UCS-2 70/67."""
    if country == "CN":
        length = len(f"【{sign_name}】{text}")
        return 1 if length <= 70 else -(-length // 67)
    return count_segments(f"[{sign_name}]{text}").segments


class AlibabaSmsChannel(HttpChannel):
    name = "sms"
    provider = "alibaba_sms"
    max_batch = MAX_NUMBERS
    pricing_unit = "segment"
    credentials = {"access_key_id": "ALIBABA_CLOUD_ACCESS_KEY_ID",
                   "access_key_secret": "ALIBABA_CLOUD_ACCESS_KEY_SECRET",
                   "report_token": "ALIBABA_SMS_REPORT_TOKEN"}

    def __init__(
        self, *, base_url: str, access_key_id: str, access_key_secret: str, sign_name: str,
        template_code: str, sign_names: dict[str, str] | None = None, param_names: list[str] | None = None,
        region_id: str = "cn-hangzhou", max_batch: int = MAX_NUMBERS,
    ) -> None:
        if not 1 <= max_batch <= MAX_NUMBERS:
            raise SpecError(f"provider.options.max_batch: 1 to {MAX_NUMBERS} numbers per call, not {max_batch}")
        self.max_batch = max_batch  # fewer numbers per call: a refused call holds back fewer messages
        self.url = base_url.rstrip("/") + "/"
        self.access_key_id, self._secret = access_key_id, access_key_secret
        self.sign_name, self.sign_names = sign_name, dict(sign_names or {})
        self.template_code, self.param_names = template_code, list(param_names or [])
        self.region_id = region_id

    def build_payload(self, message: Outgoing) -> dict[str, Any]:
        sign_name = self.sign_names.get(message.country or "", self.sign_name)
        values = message.params.get("body") or []
        names = self.param_names or [f"p{i + 1}" for i in range(len(values))]
        text = message.text if message.text is not None else message.template.text
        return {
            # Country code and number, no "+": the international form dysmsapi takes (mainland too).
            "phone": "".join(ch for ch in message.to if ch.isdigit()),
            "sign_name": sign_name,
            "template_code": self.template_code,
            "template_param": dict(zip(names, values, strict=False)) or None,
            "out_id": message.message_id,
            "segments": alibaba_segments(sign_name, text, message.country),
        }

    @staticmethod
    def segments(payload: dict[str, Any]) -> int:
        return int(payload.get("segments") or 1)

    def request_params(self, items: list[dict[str, Any]]) -> dict[str, str]:
        """The signed SendBatchSms parameters for up to 100 stored payloads of one template."""
        dumps = _json
        params = {
            "RegionId": self.region_id,
            "PhoneNumberJson": dumps([item["phone"] for item in items]),
            "SignNameJson": dumps([item["sign_name"] for item in items]),
            "TemplateCode": items[0]["template_code"],
            "OutId": items[0]["out_id"],
        }
        if any(item.get("template_param") for item in items):
            params["TemplateParamJson"] = dumps([item.get("template_param") or {} for item in items])
        return signed_params("SendBatchSms", params, access_key_id=self.access_key_id,
                             access_key_secret=self._secret, version=VERSION)

    async def send(self, session: HttpSession, payloads: list[str]) -> list[SendOutcome]:
        items = [json.loads(p) for p in payloads]
        outcomes: list[SendOutcome | None] = [None] * len(items)
        by_template: dict[str, list[int]] = {}
        for index, item in enumerate(items):
            by_template.setdefault(item["template_code"], []).append(index)
        stopped: SendOutcome | None = None
        for indexes in by_template.values():
            for start in range(0, len(indexes), MAX_NUMBERS):
                chunk = indexes[start : start + MAX_NUMBERS]
                answers = [_not_sent(stopped)] * len(chunk) if stopped else \
                    await self._send_call(session, [items[i] for i in chunk])
                for index, outcome in zip(chunk, answers, strict=True):
                    outcomes[index] = outcome
                stopped = stopped or next((o for o in answers if o.kind == "stop"), None)
        return [o for o in outcomes if o is not None]

    async def _send_call(self, session: HttpSession, items: list[dict[str, Any]]) -> list[SendOutcome]:
        headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8", "Accept": "application/json"}
        try:
            response = await session.post(self.url, content=encode_form(self.request_params(items)), headers=headers)
            verdict = self.classify_response(response.status_code, response.content, response.headers)
        except Exception as exc:  # translated at the edge into retry / permanent
            verdict = self.classify_exception(exc)
        if verdict.kind == "sent":
            biz_id = verdict.provider_message_id or ""
            return [SendOutcome(kind="sent", provider_message_id=provider_message_id(biz_id, item["phone"]))
                    for item in items]
        if verdict.error_code in PER_NUMBER_CODES and len(items) > 1:
            # Nothing of this call was sent, so halving it repeats nothing: log2(100) rounds at most
            # isolate each bad number while the others go out.
            middle = len(items) // 2
            first = await self._send_call(session, items[:middle])
            stop = next((o for o in first if o.kind == "stop"), None)  # e.g. the day's limit reached meanwhile
            rest = [_not_sent(stop)] * (len(items) - middle) if stop else \
                await self._send_call(session, items[middle:])
            return first + rest
        return [verdict] * len(items)

    def classify_response(self, status_code: int, body: bytes, headers: Any) -> SendOutcome:
        """One verdict for the whole call; a sent verdict carries the call's BizId."""
        retry_after = retry_after_s(headers)
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        code = data.get("Code") if isinstance(data, dict) else None
        if code == "OK" and status_code == 200 and isinstance(data, dict) and data.get("BizId"):
            return SendOutcome(kind="sent", provider_message_id=str(data["BizId"]))
        if not isinstance(code, str) or code == "OK":
            # Malformed, or "OK" without a BizId: the numbers may have been sent. 5xx is retried;
            # anything else is recorded, and receipts (OutId + phone) can still find the messages.
            kind = "retry" if status_code >= 500 or status_code == 429 else "permanent"
            return SendOutcome(kind=kind, error_code=f"http_{status_code}", error_detail="malformed provider response",
                               retry_after_s=retry_after, throttled=status_code == 429)
        detail = str(data.get("Message") or "") if isinstance(data, dict) else ""
        if code == NUMBER_LIMIT_CODE:
            wait = next((s for word, s in NUMBER_LIMIT_WAITS_S if word in detail.lower()), NUMBER_LIMIT_DEFAULT_S)
            return SendOutcome(kind="retry", error_code=code, error_detail=detail,
                               retry_after_s=max(wait, retry_after or 0.0))
        if code in QUOTA_LIMITS:
            which, resets, when = QUOTA_LIMITS[code]
            resets_at = resets(datetime.now(UTC))
            return SendOutcome(kind="stop", error_code=code, error_detail=(
                f"{detail or f'{which} sending limit reached'}: the account's {which} limit (SMS console, security "
                f"settings) is used up; nothing more is sent until {resets_at.isoformat()} ({when}), when the "
                "campaign continues"), not_before=resets_at)
        throttled = code in THROTTLE_CODES
        if code in STOP_CODES:
            kind = "stop"
        elif code in RETRYABLE_CODES or status_code >= 500:
            kind = "retry"
        else:
            kind = "permanent"
        return SendOutcome(kind=kind, error_code=code, error_detail=detail,
                           retry_after_s=retry_after if kind == "retry" else None, throttled=throttled)


def _not_sent(stop: SendOutcome) -> SendOutcome:
    """For the messages of a batch left unsent after a call stopped the channel: the same stop, but they stay
    queued (no deferral: the provider never refused them)."""
    return stop.model_copy(update={"not_before": None})


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))



def from_spec(spec: CampaignSpec, base_url: str | None = None, sender: str | None = None) -> AlibabaSmsChannel:
    """`sender` (default `spec.sender`) is the sign name where no per-country one applies."""
    env, options = AlibabaSmsChannel.credentials, spec.provider.options
    sign_names = options.get("sender_ids") or {}
    if not isinstance(sign_names, dict) or not all(isinstance(v, str) for v in sign_names.values()):
        raise SpecError("provider.options.sender_ids: expected a mapping of country code -> sign name")
    param_names = options.get("param_names") or []
    if not isinstance(param_names, list) or not all(isinstance(v, str) for v in param_names):
        raise SpecError("provider.options.param_names: expected a list of template variable names")
    return AlibabaSmsChannel(
        base_url=base_url or spec.provider.base_url or DEFAULT_BASE_URL,
        access_key_id=spec.secret("access_key_id", env["access_key_id"]),
        access_key_secret=spec.secret("access_key_secret", env["access_key_secret"]),
        sign_name=sender or spec.sender, sign_names={str(k).upper(): v for k, v in sign_names.items()},
        template_code=str(options.get("template_code") or spec.template.name), param_names=param_names,
        region_id=str(options.get("region_id") or "cn-hangzhou"),
        max_batch=int(options.get("max_batch") or MAX_NUMBERS),
    )
