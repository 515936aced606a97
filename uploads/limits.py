"""The sizes an upload is held to, from settings (each with its default)."""

from __future__ import annotations

from django.conf import settings


def setting(name: str, default: int) -> int:
    return int(getattr(settings, name, default))


def max_upload_bytes() -> int:
    return int(settings.USAGE_UPLOAD_MAX_BYTES)


def chunk_rows() -> int:
    return setting("USAGE_UPLOAD_CHUNK_ROWS", 20_000)


def max_line_bytes() -> int:
    return setting("USAGE_UPLOAD_MAX_LINE_BYTES", 1024 * 1024)


def max_columns() -> int:
    """The most columns a file's header may name; a wider file fails at once."""
    return setting("USAGE_UPLOAD_MAX_COLUMNS", 10_000)
