"""The sizes an upload is held to, from settings (each with its default)."""

from __future__ import annotations

from django.conf import settings
from django.db import connection


def setting(name: str, default: int) -> int:
    return int(getattr(settings, name, default))


def max_upload_bytes() -> int:
    return int(settings.USAGE_UPLOAD_MAX_BYTES)


def chunk_rows() -> int:
    """Rows per chunk: on PostgreSQL one transaction each; on SQLite a chunk is a savepoint
    and the writer commits several at once (``uploads.writers.Span``). SQLite's default is
    larger all the same: fewer, larger statements (1M rows, one run each side by side, when
    each chunk committed: 20,000 rows 12,800 rows/s, 100,000 rows 16,700 rows/s). Cancelling
    rolls back the chunk being written either way."""
    default = 20_000 if connection.vendor == "postgresql" else 100_000
    return setting("USAGE_UPLOAD_CHUNK_ROWS", default)


def max_line_bytes() -> int:
    return setting("USAGE_UPLOAD_MAX_LINE_BYTES", 1024 * 1024)


def max_columns() -> int:
    """The most columns a file's header may name; a wider file fails at once."""
    return setting("USAGE_UPLOAD_MAX_COLUMNS", 10_000)
