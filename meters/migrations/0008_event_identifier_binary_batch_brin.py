from django.db import migrations, models


def binary_collation_create(apps, schema_editor):
    """SQLite has a "BINARY" collation (byte order); PostgreSQL gets one, a copy of "C"."""
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            "CREATE COLLATION IF NOT EXISTS \"BINARY\" FROM \"C\""
        )


def batch_index_create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            "CREATE INDEX event_batch_brin ON meters_meterevent USING brin (batch_id)"
        )
    else:
        schema_editor.execute("CREATE INDEX event_batch_brin ON meters_meterevent (batch_id)")


def batch_index_drop(apps, schema_editor):
    schema_editor.execute("DROP INDEX IF EXISTS event_batch_brin")


class Migration(migrations.Migration):
    dependencies = [("meters", "0007_stored_identifier_sets")]

    operations = [
        migrations.RunPython(binary_collation_create, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="meterevent",
            name="identifier",
            field=models.CharField(db_collation="BINARY", max_length=100),
        ),
        migrations.AlterField(
            model_name="meterevent",
            name="batch",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                on_delete=models.deletion.PROTECT,
                related_name="events",
                to="meters.eventbatch",
            ),
        ),
        migrations.RunPython(batch_index_create, batch_index_drop),
    ]
