from __future__ import annotations

from django import template

register = template.Library()


@register.filter
def duration(seconds: int | None) -> str:
    """``3725`` → ``1h 2m 5s``; ``None`` → an em dash."""
    if seconds is None:
        return "—"
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m {secs}s"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


@register.filter
def get_item(mapping: object, key: str) -> object:
    """``{{ row|get_item:"payload_value" }}``: a dict value by a key with any characters."""
    if isinstance(mapping, dict):
        return mapping.get(key, "")
    return ""
