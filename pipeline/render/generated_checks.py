"""The checks every model-written value passes before it enters a template (pipeline/render/personalise.py).

A model's answer is untrusted input: it may be long, carry a link or a phone number (a phishing vector in our
sender's name), template syntax (which a later render would run), control characters, or characters the
channel cannot carry. A value failing any check is not used: the row gets the variable's fixed fallback text,
and the reason is counted. The reasons are a closed vocabulary (REASONS). `check_key` names the checks and their
settings, so that an outcome kept with a cached value is trusted only under the checks that gave it.
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from pathlib import Path

from pipeline.render import parameters
from pipeline.render.limits import MESSAGE_CHARS
from pipeline.render.parameters import PARAMETER_CHANNELS, parameter_break
from pipeline.render.segments import GSM7_BASIC, GSM7_EXTENSION

REASONS = ("empty", "too_long", "link", "phone_number", "template_syntax", "control_character", "charset",
           "no_answer")
_LINK = re.compile(
    r"(?i)\b(?:https?://|ftp://|www\.)|\b[a-z0-9-]+(?:\.[a-z0-9-]+)*\.(?:com|net|org|io|co|ly|me|info|biz|app|"
    r"xyz|link|site|online|shop|ru|cn|uk|de|in|br|gl|gg|to|tk)\b(?:/|\b)")
# Seven digits or more, allowing the separators people write numbers with.
_PHONE = re.compile(r"\+?\d(?:[\s().-]*\d){6,}")
_SYNTAX = re.compile(r"\{\{|\}\}|\{%|%\}|\{#|#\}|\$\{|\{\d+\}")
# This module's code, the parameter rule's (parameters.py) and the character set it checks SMS against: any change
# to one makes every stored outcome stale, without anyone having to remember to bump a version.
_CHECKS = hashlib.sha256(
    Path(__file__).read_bytes() + Path(parameters.__file__).read_bytes()
    + "".join(sorted(GSM7_BASIC | GSM7_EXTENSION)).encode()).hexdigest()


def parameter_limit(channel: str, max_chars: int | None) -> int:
    """The longest value accepted: the variable's own bound, within the channel's parameter limit."""
    own = MESSAGE_CHARS.get(channel, (4_096, ""))[0]
    return min(own, max_chars) if max_chars else own


@functools.cache
def control_characters() -> re.Pattern[str]:
    """Any character of the categories Cc, Cf, Co or Cs (unicodedata's, this Python's) but the newline, as one
    character class: one search per value instead of asking unicodedata about each of its characters, which was
    most of the time checking took. Built on first use (~0.3 s)."""
    runs: list[tuple[int, int]] = []
    for point in range(0x110000):
        if point != 0x0A and unicodedata.category(chr(point)) in ("Cc", "Cf", "Co", "Cs"):
            if runs and runs[-1][1] == point - 1:
                runs[-1] = (runs[-1][0], point)
            else:
                runs.append((point, point))
    return re.compile("[" + "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in runs) + "]")


def check_key(channel: str, max_chars: int | None) -> str:
    """Names the checks a value on `channel` within `max_chars` passes or fails (what refusal depends on
    besides the value): an outcome stored under another key is not trusted."""
    limit = parameter_limit(channel, max_chars)
    return hashlib.sha256(f"{_CHECKS}\x00{channel}\x00{limit}".encode()).hexdigest()[:32]


def refusal(value: str | None, *, channel: str, max_chars: int | None) -> str | None:
    """Why `value` may not enter a template on `channel` (one of REASONS), or None when it may."""
    if value is None:
        return "no_answer"
    text = value.strip()
    if not text:
        return "empty"
    if len(text) > parameter_limit(channel, max_chars):
        return "too_long"
    if _SYNTAX.search(text):
        return "template_syntax"
    if _LINK.search(text):
        return "link"
    if _PHONE.search(text):
        return "phone_number"
    if channel in PARAMETER_CHANNELS and parameter_break(text):  # WhatsApp's parameter rule (parameters.py)
        return "control_character"
    if control_characters().search(text):
        return "control_character"
    if channel == "sms" and any(c not in GSM7_BASIC and c not in GSM7_EXTENSION for c in text):
        # One character outside GSM-7 (an emoji, a curly quote) turns the whole SMS into UCS-2 and
        # more than doubles its parts: the fallback text costs what the estimate assumed.
        return "charset"
    return None


def clean(value: str) -> str:
    """The value as it enters the template: stripped of surrounding whitespace and quotes a model adds."""
    return value.strip().strip('"').strip()
