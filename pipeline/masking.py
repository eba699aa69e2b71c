"""Masking of personal data before it reaches a log or an artifact."""

from __future__ import annotations

import re

# A phone number in free text: international with a + (separators allowed), or a bare run of 9 to
# 15 digits (a wa_id, an E.164 without its +). Counts, rates and times ("2607 (354/s)") stay legible.
_PHONE = re.compile(r"\+\d[\d\s().-]{6,}\d|(?<![\d.])\d{9,15}(?![\d.])")
# A number as written nationally or with a 00 prefix ("07911 123456", "(415) 555-2671", "0044 7911 123456"):
# digit groups joined by one space, dot or dash, an area code perhaps in brackets. _national masks it when it
# holds 7 to 15 digits. Not inside a word, a path, a time, an amount or a number masked already.
_NATIONAL = re.compile(
    r"(?<![\w+.,:/@*-])(?:\(\d{1,5}\)[ .-]?|\d{1,8}[ .-])(?:\d{1,8}[ .-])*\d{1,8}(?![\w@*]|[.,:/-]\d)"
)
# Digit groups of that shape that are no one's number; they stay as written, and _NATIONAL never runs across
# them (a date before a number must not hide the number).
_NOT_A_NUMBER = re.compile(
    r"(?<![\d.-])(?:\d{4}([./-])\d{1,2}\1\d{1,2}|\d{1,2}([./-])\d{1,2}\2\d{4})(?!\d|[./-]\d)"  # dates
    r"|(?<![\d.])(?:19|20)\d{2}[-/](?:19|20)\d{2}(?![\d.-])"  # a span of years, 2019-2026
    r"|(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?!\d|\.\d)"  # IPv4
    r"|(?<![\d.])\d{1,9}\.\d{1,6}(?!\d|\.\d)"  # an amount, 160.3009
    r"|(?<![\d.])[1-9]\d{0,2}(?:([ .])\d{3})(?:\3\d{3})*(?!\d|[ .,]\d)"  # a count in thousands, 1 234 567
    r"|(?<!\d)20\d{6}-\d{6}(?!\d)"  # YYYYMMDD-HHMMSS, as in an upload's campaign id
)
# An address: any domain, with or without a dot (bob@localhost is someone's mailbox too).
_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*)")


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
    text = _PHONE.sub(lambda m: mask_phone(re.sub(r"[^\d+]", "", m.group(0))), text)
    parts, last = [], 0
    for kept in _NOT_A_NUMBER.finditer(text):
        parts += [_NATIONAL.sub(_national, text[last:kept.start()]), kept.group(0)]
        last = kept.end()
    parts.append(_NATIONAL.sub(_national, text[last:]))
    return "".join(parts)


def _national(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    return mask_phone(digits) if 7 <= len(digits) <= 15 else match.group(0)
