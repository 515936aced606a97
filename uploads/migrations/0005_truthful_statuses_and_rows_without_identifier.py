"""Statuses that tell the truth (Validated, Nothing new, Failed when no row was imported), what
rows without an identifier are, and identifiers released for uploads reverted before."""

from django.db import migrations, models

# The placeholder of events.ingestion.dedup.RELEASED_IDENTIFIER, as it was when written.
_RELEASED = "substr('released:' || id || ':' || '" + "~" * 91 + "', 1, 101)"


def statuses_told_truly(apps, schema_editor):
    Upload = apps.get_model("uploads", "Upload")
    done = ["succeeded", "succeeded_with_errors"]
    Upload.objects.filter(validate_only=True, status__in=done).update(status="validated")
    finished = Upload.objects.filter(validate_only=False, status__in=done, rows_imported=0)
    finished.filter(rows_failed__gt=0).update(
        status="failed",
        failed_reason="No row was imported: every row failed or was already recorded.",
    )
    finished.filter(rows_failed=0, rows_duplicate__gt=0).update(
        status="nothing_new", failed_reason="Nothing new: every row was already recorded."
    )


def statuses_as_before(apps, schema_editor):
    Upload = apps.get_model("uploads", "Upload")
    Upload.objects.filter(status="validated").update(status="succeeded")
    Upload.objects.filter(status="nothing_new").update(status="succeeded", failed_reason="")


def reverted_identifiers_release(apps, schema_editor):
    """Uploads reverted before revert released identifiers: release theirs now, so their
    files can be uploaded again (and trust no stored identifier set)."""
    schema_editor.execute(
        f"UPDATE meters_meterevent SET released_identifier = identifier, identifier = {_RELEASED} "
        "WHERE cancelled_at IS NOT NULL AND released_identifier IS NULL AND batch_id IN "
        "(SELECT batch_id FROM uploads_upload WHERE reverted_at IS NOT NULL)"
    )
    schema_editor.execute("DELETE FROM meters_storedidentifierset")


class Migration(migrations.Migration):

    dependencies = [
        ("uploads", "0004_events_app"),
        ("events", "0002_released_identifiers"),
    ]

    operations = [
        # Uploads made before the question keep the identifiers they were imported with.
        migrations.AddField(
            model_name="upload",
            name="rows_without_identifier",
            field=models.CharField(
                choices=[
                    ("new_usage", "new usage: count every row"),
                    (
                        "corrected_copy",
                        "a corrected copy of an earlier file: don't count rows already imported",
                    ),
                ],
                default="corrected_copy",
                max_length=16,
            ),
        ),
        migrations.AlterField(
            model_name="upload",
            name="rows_without_identifier",
            field=models.CharField(
                choices=[
                    ("new_usage", "new usage: count every row"),
                    (
                        "corrected_copy",
                        "a corrected copy of an earlier file: don't count rows already imported",
                    ),
                ],
                default="new_usage",
                max_length=16,
            ),
        ),
        migrations.AlterField(
            model_name="upload",
            name="status",
            field=models.CharField(
                choices=[
                    ("queued", "Queued"),
                    ("validating", "Validating"),
                    ("importing", "Importing"),
                    ("succeeded", "Succeeded"),
                    ("succeeded_with_errors", "Succeeded with errors"),
                    ("nothing_new", "Nothing new"),
                    ("validated", "Validated"),
                    ("failed", "Failed"),
                    ("cancelled", "Cancelled"),
                ],
                default="queued",
                max_length=24,
            ),
        ),
        migrations.RunPython(statuses_told_truly, statuses_as_before),
        migrations.RunPython(reverted_identifiers_release, migrations.RunPython.noop),
    ]
