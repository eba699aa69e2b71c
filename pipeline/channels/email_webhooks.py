"""E-mail delivery reports -> Receipts, and the RFC 8058 one-click unsubscribe body check.

SMTP has no status webhooks of its own: our relay (the sandbox's SMTP server here; an ESP's event
webhook or a DSN processor in production) posts reports in this JSON format, signed like Meta's:
`X-Email-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>`.

    {"object": "email_report", "reports": [{"event": "delivered" | "bounced", "message_id": "<id@domain>",
      "queue_id": "...", "recipient": "a@example.com", "smtp_code": 550, "status": "5.1.1",
      "diagnostic": "...", "timestamp": "2026-10-01T08:00:00+00:00"}]}

A bounce becomes a failed receipt whose error code is the DSN status (`5.1.1`), or the SMTP code
when there is none; the correlation id is the local part of the Message-ID we set.
"""

from __future__ import annotations

import email.parser
import email.policy
import hmac
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from pipeline.channels.email import ONE_CLICK, correlation_id
from pipeline.records import Inbound, Receipt

PROVIDER = "email"
SIGNATURE_HEADER = "X-Email-Signature"
_EVENTS = {"delivered": "delivered", "bounced": "failed"}


class MalformedPayload(ValueError):
    """Not an e-mail report we understand; ingest quarantines it."""


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:  # a plain dict is case-sensitive; Starlette's Headers are not
        value = next((v for k, v in headers.items() if k.lower() == name.lower()), None)
    return value


def sign(raw_body: bytes, secret: str) -> str:
    return "sha256=" + hmac.digest(secret.encode("utf-8"), raw_body, "sha256").hex()


def verify(raw_body: bytes, headers: Mapping[str, str], secret: str, url: str | None = None) -> bool:
    received = _header(headers, SIGNATURE_HEADER)
    if not received or not secret:
        return False
    return hmac.compare_digest(sign(raw_body, secret).encode("ascii"), received.strip().lower().encode("utf-8"))


def _time(value: Any, where: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        raise MalformedPayload(f"{where}.timestamp: {value!r} is not ISO 8601") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _receipt(report: Any, where: str) -> Receipt:
    if not isinstance(report, dict):
        raise MalformedPayload(f"{where}: expected an object")
    event = report.get("event")
    if not isinstance(event, str) or event not in _EVENTS:
        raise MalformedPayload(f"{where}.event: unknown event {event!r}")
    header_id = report.get("message_id")
    if not isinstance(header_id, str) or not header_id:
        raise MalformedPayload(f"{where}.message_id: expected the Message-ID")
    status = _EVENTS[event]
    failed = status == "failed"
    code = report.get("status") or report.get("smtp_code")  # the DSN status says more than 550 alone
    title = " ".join(str(p) for p in (report.get("smtp_code"), report.get("status"), report.get("diagnostic")) if p)
    return Receipt(
        provider=PROVIDER, provider_message_id=str(report.get("queue_id") or header_id),
        message_id=correlation_id(header_id), status=status,  # type: ignore[arg-type]  # a value of _EVENTS
        error_code=(str(code) if code else "bounced") if failed else None,
        error_title=(title or None) if failed else None,
        recipient=str(report["recipient"]).lower() if report.get("recipient") else None,
        occurred_at=_time(report.get("timestamp"), where),
        raw_json=json.dumps(report, ensure_ascii=False, separators=(",", ":"), sort_keys=True),
    )


def parse(raw_body: bytes) -> tuple[list[Receipt], list[Inbound]]:
    try:
        doc = json.loads(raw_body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedPayload(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("object") != "email_report":
        raise MalformedPayload("body: expected an object with \"object\": \"email_report\"")
    reports = doc.get("reports")
    if not isinstance(reports, list):
        raise MalformedPayload("reports: expected a list")
    return [_receipt(r, f"reports[{i}]") for i, r in enumerate(reports)], []


def is_one_click(raw_body: bytes, content_type: str | None) -> bool:
    """True for an RFC 8058 one-click POST: `List-Unsubscribe=One-Click` as a form field, sent as
    application/x-www-form-urlencoded or (as the RFC prefers) multipart/form-data."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", errors="replace")
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw_body)
        for part in message.iter_parts() if message.is_multipart() else []:
            if part.get_param("name", header="content-disposition") == "List-Unsubscribe":
                value = part.get_payload(decode=True) or b""
                if value.strip() == b"One-Click":
                    return True
        return False
    try:
        fields = parse_qsl(raw_body.decode("utf-8"), keep_blank_values=True)
    except (UnicodeDecodeError, ValueError):
        return False
    return ("List-Unsubscribe", "One-Click") in fields or raw_body.strip() == ONE_CLICK.encode()
