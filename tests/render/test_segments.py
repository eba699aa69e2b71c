"""The vectorised segments/encoding columns agree with sms_segments.count_segments text by text."""

from __future__ import annotations

import random

import polars as pl
import pytest

from pipeline.render.segments import count_segments, with_segments


def measured(texts: list[str | None]) -> list[tuple[int | None, str | None]]:
    return (
        with_segments(pl.DataFrame({"text": texts}, schema={"text": pl.String})).select("segments", "encoding").rows()
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", (1, "gsm7")),
        ("a" * 160, (1, "gsm7")),
        ("a" * 161, (2, "gsm7")),
        ("{" * 80, (1, "gsm7")),  # extension characters count two
        ("{" * 81, (2, "gsm7")),
        ("a" * 152 + "€" + "a" * 153, (3, "gsm7")),  # the € may not straddle parts 1 and 2
        ("é" * 160, (1, "gsm7")),  # é is in the basic alphabet
        ("ó" + "a" * 69, (1, "ucs2")),  # ó is not: one switches the whole text
        ("Ж" * 71, (2, "ucs2")),
        ("😀" * 35, (1, "ucs2")),  # two UTF-16 units each
        ("😀" * 36, (2, "ucs2")),
        ("a" * 66 + "😀" + "a" * 66, (3, "ucs2")),
        (None, (None, None)),
    ],
)
def test_edges(text: str | None, expected: tuple) -> None:
    assert measured([text]) == [expected]


def test_random_texts_agree_with_count_segments() -> None:
    rng = random.Random(5)
    alphabets = ["abc xyz", "abc{}€^", "abcé😀", "абв😀", "ab{", "a😀"]
    texts = ["".join(rng.choice(rng.choice(alphabets)) for _ in range(rng.randint(0, 420))) for _ in range(4000)]
    expected = [(count_segments(t).segments, count_segments(t).encoding) for t in texts]
    assert measured(texts) == expected
    assert {e for _, e in expected} == {"gsm7", "ucs2"} and max(s for s, _ in expected) >= 4
