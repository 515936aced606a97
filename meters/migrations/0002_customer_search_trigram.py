"""Trigram indexes so the customer search (ID, name, email; case-insensitive "contains")
stays quick with 100,000+ customers on PostgreSQL.

Django's ``icontains`` on PostgreSQL is ``UPPER(col::text) LIKE UPPER('%q%')``; these GIN
indexes match that expression. SQLite (the embedded mode) gets no index: it is for small
installations. If the pg_trgm extension can't be created (no privilege), the migration goes on
without the indexes and the search still works, by a sequential scan.
"""

from __future__ import annotations

from django.db import migrations, transaction

COLUMNS = ("external_id", "name", "email")


def create_indexes(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    try:
        with transaction.atomic(using=schema_editor.connection.alias):
            schema_editor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except Exception:  # noqa: BLE001 - a missing privilege must not block the install
        return
    for column in COLUMNS:
        schema_editor.execute(
            f"CREATE INDEX IF NOT EXISTS customer_{column}_trgm ON meters_customer "
            f"USING gin (UPPER({column}::text) gin_trgm_ops)"
        )


def drop_indexes(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for column in COLUMNS:
        schema_editor.execute(f"DROP INDEX IF EXISTS customer_{column}_trgm")


class Migration(migrations.Migration):
    dependencies = [("meters", "0001_initial")]

    operations = [migrations.RunPython(create_indexes, drop_indexes, elidable=False)]
