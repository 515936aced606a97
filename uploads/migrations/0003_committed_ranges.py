from django.db import migrations, models


def ranges_from_prefix(apps, schema_editor):
    """Before this field, the committed records were always the file's first ones."""
    Upload = apps.get_model("uploads", "Upload")
    for upload in Upload.objects.filter(records_committed__gt=0).only("records_committed"):
        upload.committed_ranges = [[0, upload.records_committed]]
        upload.save(update_fields=["committed_ranges"])


class Migration(migrations.Migration):
    dependencies = [("uploads", "0002_revert_in_worker")]

    operations = [
        migrations.AddField(
            model_name="upload",
            name="committed_ranges",
            field=models.JSONField(blank=True, default=list),
        ),
        migrations.RunPython(ranges_from_prefix, migrations.RunPython.noop),
    ]
