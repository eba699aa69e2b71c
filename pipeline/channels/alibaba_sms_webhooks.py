"""Alibaba Cloud SMS delivery reports (SmsReport HTTP push): a JSON array of reports -> Receipts.

Alibaba documents no signature for SmsReport, so the receiver protects the route with a shared token
in the `X-Sms-Report-Token` header: our own protection (configure the same token on the push URL's
proxy, or put the route behind an allow-list). The receiver must answer `ACK_BODY` with HTTP 200:
Alibaba checks only the numeric `code` and retries anything else after 1, 5 and 10 minutes.

How a report finds its message: SendBatchSms carries one OutId per call, the message id of the
batch's first message, and the outbox keeps `provider_message_id = "<BizId>:<phone>"` for every sent
message. A report (out_id, phone_number, biz_id) therefore names `"<biz_id>:<phone_number>"`, which
joins the outbox directly; after a crash (no BizId recorded) the out_id gives the campaign and the
phone its recipient. `resolve_message_ids` runs that join after ingest.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

import duckdb

from pipeline.records import Inbound, Receipt

PROVIDER = "alibaba_sms"
TOKEN_HEADER = "X-Sms-Report-Token"
ACK_BODY = b'{"code":0,"msg":"received"}'  # the answer Alibaba expects for an accepted push
CHINA_TIME = timezone(timedelta(hours=8))  # report times are Beijing time, without a zone


class MalformedPayload(ValueError):
    """Not an SmsReport push we understand; ingest quarantines it."""


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:  # a plain dict is case-sensitive; Starlette's Headers are not
        value = next((v for k, v in headers.items() if k.lower() == name.lower()), None)
    return value


def verify(raw_body: bytes, headers: Mapping[str, str], secret: str, url: str | None = None) -> bool:
    """True when the shared report token matches (compared in constant time)."""
    received = _header(headers, TOKEN_HEADER)
    if not received or not secret:
        return False
    return hmac.compare_digest(secret.encode("utf-8"), received.strip().encode("utf-8"))


def provider_message_id(biz_id: str, phone: str) -> str:
    """BizId names a whole SendBatchSms call; with the number it names one message."""
    return f"{biz_id}:{phone}"


def _time(value: Any, where: str) -> datetime:
    try:
        return datetime.strptime(str(value), "%Y-%m-%d %H:%M:%S").replace(tzinfo=CHINA_TIME)
    except ValueError:
        raise MalformedPayload(f"{where}: {value!r} is not 'YYYY-MM-DD hh:mm:ss'") from None


def _str(report: dict[str, Any], name: str, where: str) -> str:
    value = report.get(name)
    if isinstance(value, int | str) and str(value):
        return str(value)
    raise MalformedPayload(f"{where}.{name}: expected a non-empty string")


def _receipt(report: Any, where: str) -> Receipt:
    if not isinstance(report, dict):
        raise MalformedPayload(f"{where}: expected an object")
    phone = _str(report, "phone_number", where)
    biz_id = _str(report, "biz_id", where)
    success = report.get("success")
    if isinstance(success, str):
        success = success.lower() == "true"
    if not isinstance(success, bool):
        raise MalformedPayload(f"{where}.success: expected true or false")
    error = None if success else str(report.get("err_code") or "UNKNOWN")
    return Receipt(
        provider=PROVIDER, provider_message_id=provider_message_id(biz_id, phone),
        message_id=None,  # resolved from out_id + phone by resolve_message_ids (see the module doc)
        status="delivered" if success else "failed", error_code=error,
        error_title=None if success else (str(report.get("err_msg") or "") or None),
        recipient=phone,
        occurred_at=_time(report.get("report_time") or report.get("send_time"), f"{where}.report_time"),
        raw_json=json.dumps(report, ensure_ascii=False, separators=(",", ":"), sort_keys=True),
    )


def parse(raw_body: bytes) -> tuple[list[Receipt], list[Inbound]]:
    """Every report in one push. Alibaba reports only the final outcome: DELIVERED or a failure."""
    try:
        doc = json.loads(raw_body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedPayload(f"not JSON: {exc}") from None
    if not isinstance(doc, list):
        raise MalformedPayload("body: expected a JSON array of reports")
    return [_receipt(report, f"[{i}]") for i, report in enumerate(doc)], []


# Fills `message_id` for Alibaba receipts (in `events`, or in `unmatched_events` before they are moved): first by
# the exact "<BizId>:<phone>" the outbox recorded, then (a crash left no BizId) by the campaign of the out_id
# message and the phone digits. Mainland numbers may be reported without their 86 prefix, hence the second
# digit comparison.
RESOLVE_SQL = """
UPDATE {table} SET message_id = m.message_id
FROM (
    SELECT e.event_id, coalesce(
        (SELECT o.message_id FROM outbox o WHERE o.provider_message_id = e.provider_message_id LIMIT 1),
        (SELECT o.message_id FROM outbox o JOIN outbox f ON f.message_id = json_extract_string(e.raw_json, '$.out_id')
         WHERE o.campaign_id = f.campaign_id AND o.channel = f.channel
           AND regexp_replace(o.recipient_key, '[^0-9]', '', 'g') IN (e.digits, '86' || e.digits)
         LIMIT 1)) AS message_id
    FROM (SELECT *, regexp_replace(recipient, '[^0-9]', '', 'g') AS digits FROM {table}) e
    WHERE e.provider = ? AND e.message_id IS NULL
) AS m
WHERE {table}.event_id = m.event_id AND m.message_id IS NOT NULL
"""
RECEIPT_TABLES = ("events", "unmatched_events")


def resolve_message_ids(con: duckdb.DuckDBPyConnection, table: str = "events") -> int:
    """Links Alibaba receipts of `table` to their messages after ingest; returns how many were linked."""
    if table not in RECEIPT_TABLES:
        raise ValueError(f"not a receipts table: {table!r}")
    rows = con.execute(RESOLVE_SQL.format(table=table), [PROVIDER]).fetchall()
    return int(rows[0][0]) if rows else 0
