"""Server-side SVG bar charts for usage buckets, and exact number formatting.

Why SVG from the server rather than a vendored chart library: the chart arrives in the same
htmx swap as the table beside it, works without JavaScript, costs no dependency, and every bar
can be a plain link to the level below ("explain this number"). Geometry is computed here;
the numbers shown stay exact Decimals.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import template

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


@register.inclusion_tag("meters/usage_chart.html")
def usage_chart(rows: list[Any], label: str = "Usage", grouping: str = "day") -> dict[str, Any]:
    """Bars for ``rows`` (objects with start, end, value, event_count and url)."""
    hour_labels = grouping == "hour"
    values = [Decimal(row.value) for row in rows]
    high = max([Decimal(0), *values])
    low = min([Decimal(0), *values])
    span = (high - low) or Decimal(1)
    plot = Decimal(HEIGHT - TOP)
    zero_y = TOP + float(high / span * plot)
    width = WIDTH / max(len(rows), 1)
    gap = 1.0 if width > 4 else 0.0
    bars = []
    for row, value in zip(rows, values, strict=True):
        size = float(abs(value) / span * plot)
        top = zero_y - size if value >= 0 else zero_y
        when = f"{row.start:%Y-%m-%d %H:%M}" if hour_labels else f"{row.start:%Y-%m-%d}"
        bars.append(
            {
                "x": 0.0,
                "y": round(top, 2),
                "height": round(max(size, 0.0 if value == 0 else 1.0), 2),
                "title": f"{when} UTC: {usage_number(value)} ({row.event_count} events)",
                "url": row.url,
            }
        )
    for position, bar in enumerate(bars):
        bar["x"] = round(position * width + gap / 2, 2)
    ticks = []
    if rows:
        for position in sorted({0, len(rows) // 2, len(rows) - 1}):
            start = rows[position].start
            ticks.append(
                {
                    "x": round(position * width + width / 2, 2),
                    "text": f"{start:%m-%d %H:00}" if hour_labels else f"{start:%Y-%m-%d}",
                }
            )
    return {
        "bars": bars,
        "bar_width": round(max(width - gap, 0.5), 2),
        "width": WIDTH,
        "height": HEIGHT,
        "zero_y": round(zero_y, 2),
        "high": usage_number(high),
        "ticks": ticks,
        "label": label,
    }
