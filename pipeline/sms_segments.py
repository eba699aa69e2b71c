"""How many billed SMS parts a text takes (PROVIDERS.md 6.3): GSM-7 160/153, UCS-2 70/67.

One character outside GSM 03.38 switches the whole text to UCS-2; GSM extension characters take two
septets and astral characters (most emoji) two UTF-16 units, and neither is split across parts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# GSM 03.38 basic character set (the escape code 0x1B itself is not a character).
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# The extension table: each is sent as ESC + character, two septets.
GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")

LIMITS = {"gsm7": (160, 153), "ucs2": (70, 67)}  # (single part, per part when concatenated)


@dataclass(frozen=True)
class SmsSegments:
    encoding: Literal["gsm7", "ucs2"]
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2)
    segments: int


def count_segments(text: str) -> SmsSegments:
    """The parts `text` is sent (and billed) as; an empty text is still one part."""
    if all(c in GSM7_BASIC or c in GSM7_EXTENSION for c in text):
        encoding: Literal["gsm7", "ucs2"] = "gsm7"
        weights = [2 if c in GSM7_EXTENSION else 1 for c in text]
    else:
        encoding = "ucs2"
        weights = [2 if ord(c) > 0xFFFF else 1 for c in text]
    units = sum(weights)
    single, per_part = LIMITS[encoding]
    if units <= single:
        return SmsSegments(encoding, units, 1)
    segments, used = 1, 0
    for weight in weights:
        # An escape pair or a surrogate pair never straddles two parts: it starts the next one.
        if used + weight > per_part:
            segments, used = segments + 1, 0
        used += weight
    return SmsSegments(encoding, units, segments)
