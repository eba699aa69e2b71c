"""Charts for the HTML report as inline SVG built on the server: no script, no network, opens offline.

Every text that reaches the SVG is escaped here; the callers pass plain strings and numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from html import escape

WIDTH = 520
LABEL_W = 120
VALUE_W = 110
BAR_H = 22
GAP = 8
PLATFORM = "#2f6fb0"
SERVICE = "#9cc3e6"
FUNNEL = ("#2f6fb0", "#3f9d6e", "#e0a030")
FAILED = "#c2453d"


def _svg(chart_id: str, title: str, height: int, body: list[str]) -> str:
    return (
        f'<svg class="chart" id="{escape(chart_id)}" data-chart="{escape(chart_id)}" role="img" '
        f'aria-label="{escape(title)}" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" '
        f'font-family="system-ui, sans-serif" font-size="12">'
        f"<title>{escape(title)}</title>{''.join(body)}</svg>"
    )


def _empty(chart_id: str, title: str, text: str) -> str:
    return _svg(chart_id, title, 40, [f'<text x="0" y="24" fill="#5a6372">{escape(text)}</text>'])


def _label(y: float, text: str, label_w: int = LABEL_W) -> str:
    short = _short(text, label_w // 7)
    return f'<text x="{label_w - 8}" y="{y:.1f}" text-anchor="end" fill="#1d2330">{escape(short)}</text>'


def _short(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[: max(chars - 1, 0)] + "…"


def stacked_bars(
    chart_id: str, title: str, rows: Sequence[tuple[str, float, float]], *, legend: tuple[str, str],
    fmt: Callable[[float], str], empty: str = "No cost to show.",
) -> str:
    """Horizontal bars of two stacked parts per label (e.g. platform + service fee per country)."""
    rows = [r for r in rows if r[1] + r[2] > 0]
    if not rows:
        return _empty(chart_id, title, empty)
    top = max(a + b for _, a, b in rows)
    span = WIDTH - LABEL_W - VALUE_W
    body = [
        f'<rect x="{LABEL_W}" y="2" width="12" height="12" fill="{PLATFORM}"/>'
        f'<text x="{LABEL_W + 18}" y="12">{escape(legend[0])}</text>'
        f'<rect x="{LABEL_W + 150}" y="2" width="12" height="12" fill="{SERVICE}"/>'
        f'<text x="{LABEL_W + 168}" y="12">{escape(legend[1])}</text>'
    ]
    y = 24
    for label, first, second in rows:
        w1, w2 = span * first / top, span * second / top
        body.append(_label(y + BAR_H * 0.7, label))
        body.append(f'<rect class="bar" x="{LABEL_W}" y="{y}" width="{w1:.2f}" height="{BAR_H}" fill="{PLATFORM}">'
                    f"<title>{escape(label)}: {escape(legend[0])} {escape(fmt(first))}</title></rect>")
        body.append(f'<rect class="bar" x="{LABEL_W + w1:.2f}" y="{y}" width="{w2:.2f}" height="{BAR_H}" '
                    f'fill="{SERVICE}"><title>{escape(label)}: {escape(legend[1])} {escape(fmt(second))}</title>'
                    "</rect>")
        body.append(f'<text x="{LABEL_W + w1 + w2 + 6:.2f}" y="{y + BAR_H * 0.7:.1f}" fill="#1d2330">'
                    f"{escape(fmt(first + second))}</text>")
        y += BAR_H + GAP
    return _svg(chart_id, title, y + 4, body)


def bars(
    chart_id: str, title: str, rows: Sequence[tuple[str, float]], *, fmt: Callable[[float], str],
    color: str = FAILED, empty: str = "Nothing to show.", notes: Sequence[str] | None = None,
    label_w: int = LABEL_W, value_w: int = VALUE_W,
) -> str:
    """Horizontal bars, one per label, with the value (and an optional note) after each bar."""
    kept = [(i, r) for i, r in enumerate(rows) if r[1] > 0]
    if not kept:
        return _empty(chart_id, title, empty)
    top = max(v for _, (_, v) in kept)
    span = WIDTH - label_w - value_w
    body, y = [], 4
    for i, (label, value) in kept:
        w = max(span * value / top, 1.0)
        note = notes[i] if notes and notes[i] else ""
        room = int((WIDTH - label_w - w) / 6.5) - len(fmt(value)) - 4  # characters left after the bar
        text = fmt(value) + (f" · {_short(note, room)}" if note and room > 3 else "")
        tip = fmt(value) + (f" · {note}" if note else "")
        body.append(_label(y + BAR_H * 0.7, label, label_w))
        body.append(f'<rect class="bar" x="{label_w}" y="{y}" width="{w:.2f}" height="{BAR_H}" fill="{color}">'
                    f"<title>{escape(label)}: {escape(tip)}</title></rect>")
        body.append(f'<text x="{label_w + w + 6:.2f}" y="{y + BAR_H * 0.7:.1f}" fill="#1d2330">{escape(text)}</text>')
        y += BAR_H + GAP
    return _svg(chart_id, title, y + 4, body)


def funnel(chart_id: str, title: str, sent: int, delivered: int, read: int) -> str:
    """Sent -> delivered -> read, each bar as wide as its share of the sent messages."""
    if sent <= 0:
        return _empty(chart_id, title, "No message was sent.")
    span = WIDTH - LABEL_W - VALUE_W
    body, y = [], 4
    for (label, value), color in zip((("Sent", sent), ("Delivered", delivered), ("Read", read)), FUNNEL, strict=True):
        w = max(span * value / sent, 1.0)
        share = f"{value:,} ({value / sent:.1%})"
        body.append(_label(y + BAR_H * 0.7, label))
        body.append(f'<rect class="bar" x="{LABEL_W}" y="{y}" width="{w:.2f}" height="{BAR_H}" fill="{color}">'
                    f"<title>{label}: {escape(share)}</title></rect>")
        body.append(f'<text x="{LABEL_W + w + 6:.2f}" y="{y + BAR_H * 0.7:.1f}" fill="#1d2330">{escape(share)}</text>')
        y += BAR_H + GAP
    return _svg(chart_id, title, y + 4, body)
