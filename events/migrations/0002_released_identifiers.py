"""A revert releases its events' identifiers: ``released_identifier`` keeps the one each was
sent with, and ``identifier`` widens to 101 characters for the placeholders (see
``events.ingestion.dedup``)."""

from django.db import migrations, models


def identifier_widen(apps, schema_editor):
    """PostgreSQL only: varchar(100) to varchar(101) in the same collation needs no rewrite of
    the table or its unique index. SQLite does not enforce a varchar length, and Django would
    rebuild the whole events table to change it: the state alone changes there."""
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            'ALTER TABLE meters_meterevent ALTER COLUMN identifier TYPE varchar(101) COLLATE "BINARY"'
        )


def identifier_narrow(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            'ALTER TABLE meters_meterevent ALTER COLUMN identifier TYPE varchar(100) COLLATE "BINARY"'
        )


class Migration(migrations.Migration):

    dependencies = [
        ("events", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="meterevent",
            name="released_identifier",
            field=models.CharField(blank=True, db_collation="BINARY", max_length=100, null=True),
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="meterevent",
                    name="identifier",
                    field=models.CharField(db_collation="BINARY", max_length=101),
                ),
            ],
            database_operations=[migrations.RunPython(identifier_widen, identifier_narrow)],
        ),
        migrations.AddIndex(
            model_name="meterevent",
            index=models.Index(
                condition=models.Q(released_identifier__isnull=False),
                fields=["released_identifier"],
                name="event_released_identifier",
            ),
        ),
    ]
