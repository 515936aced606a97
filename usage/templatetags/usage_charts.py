"""Server-side SVG bar charts for usage buckets, and exact number formatting.

Why SVG from the server rather than a vendored chart library: the chart arrives in the same
htmx swap as the table beside it, works without JavaScript, costs no dependency, and every bar
is a plain link to the level below ("explain this number"). The markup is built here in one
pass (a page can hold 5 x 168 bars, which a template loop renders several times slower); the
numbers shown stay exact Decimals, only the bar geometry uses floats.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import template
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

register = template.Library()

WIDTH = 720
HEIGHT = 160
TOP = 8  # room above the tallest bar


@register.filter
def usage_number(value: Decimal | int | None) -> str:
    """A usage figure with thousands separators and every digit it has: 1234.50 -> 1,234.50."""
    if value is None:
        return "—"
    return format(value, ",")


@register.simple_tag
def usage_chart(rows: list[Any], label: str = "Usage", grouping: str = "day") -> SafeString:
    """An SVG bar per row (objects with start, value, event_count, url, label, display)."""
    values = [Decimal(row.value) for row in rows]
    high = max([Decimal(0), *values])
    low = min([Decimal(0), *values])
    span = float((high - low) or 1)
    plot = HEIGHT - TOP
    zero_y = TOP + float(high) / span * plot
    width = WIDTH / max(len(rows), 1)
    gap = 1.0 if width > 4 else 0.0
    bar_width = max(width - gap, 0.5)
    parts = [
        f'<figure class="usage-chart"><svg viewBox="0 0 {WIDTH} {HEIGHT + 22}" role="img" '
        f'aria-label="{escape(label)}">'
        f'<line x1="0" x2="{WIDTH}" y1="{zero_y:.2f}" y2="{zero_y:.2f}" class="axis"/>'
    ]
    for position, (row, value) in enumerate(zip(rows, values, strict=True)):
        size = abs(float(value)) / span * plot
        if value and size < 1:
            size = 1.0  # a tiny non-zero value stays visible
        top = zero_y - size if value >= 0 else zero_y
        title = f"{row.label} UTC: {row.display} ({row.event_count} events)"
        rect = (
            f'<rect x="{position * width + gap / 2:.2f}" y="{top:.2f}" width="{bar_width:.2f}" '
            f'height="{size:.2f}"><title>{escape(title)}</title></rect>'
        )
        parts.append(f'<a href="{escape(row.url)}">{rect}</a>' if row.url else rect)
    if rows:
        last = len(rows) - 1
        ticks = [(0, 0.0, "start"), (len(rows) // 2, None, "middle"), (last, WIDTH, "end")]
        for position, x, anchor in ticks if last else ticks[:1]:
            text = rows[position].label
            if grouping == "hour":
                text = text[5:]  # "MM-DD HH:MM"
            x = position * width + width / 2 if x is None else x
            parts.append(
                f'<text x="{x:.2f}" y="{HEIGHT + 16}" text-anchor="{anchor}">{escape(text)}</text>'
            )
    parts.append(f'<text x="2" y="10" class="max">max {escape(usage_number(high))}</text>')
    parts.append("</svg></figure>")
    return mark_safe("".join(parts))  # noqa: S308 - every interpolated text is escaped
