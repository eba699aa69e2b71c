"""Masking of personal data before it reaches a log or an artifact."""

from __future__ import annotations

import re

# A phone number in free text: international with a + (separators allowed), or a bare run of 9 to
# 15 digits (a wa_id, an E.164 without its +). Counts, rates and times ("2607 (354/s)") stay legible.
_PHONE = re.compile(r"\+\d[\d\s().-]{6,}\d|(?<![\d.])\d{9,15}(?![\d.])")
_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})")


def mask_phone(phone: str | None) -> str:
    """+447700900123 -> +44*******123 (country code and last three digits stay readable)."""
    if not phone:
        return ""
    digits = phone.strip()
    if len(digits) <= 6:
        return "*" * len(digits)
    head = 3 if digits.startswith("+") else 2
    return digits[:head] + "*" * (len(digits) - head - 3) + digits[-3:]


def mask_email(address: str | None) -> str:
    if not address or "@" not in address:
        return mask_phone(address)
    local, domain = address.rsplit("@", 1)
    return f"{local[:1]}***@{domain}"


def mask_text(text: str) -> str:
    """Masks every phone number and e-mail address found in free text (log lines, errors)."""
    text = _EMAIL.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", text)
    return _PHONE.sub(lambda m: mask_phone(re.sub(r"[^\d+]", "", m.group(0))), text)
