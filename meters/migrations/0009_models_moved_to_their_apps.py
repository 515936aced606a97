"""Every model but Meter has moved to the app of its stage; the tables stay (state only). Content
types and audit entries follow the models to their new app labels."""

from django.db import migrations

# (model, new app label) for every model that left meters.
MOVED = {
    "auditentry": "usage_portal",
    "customer": "customers",
    "eventbatch": "events",
    "meterevent": "events",
    "usagerollup": "events",
    "storedidentifierset": "events",
    "eventrejection": "events",
    "staleusageday": "usage",
    "meterdailyrollup": "usage",
    "metermonthlyrollup": "usage",
    "meterusagetotal": "usage",
    "usagealert": "alerts",
    "usagealerttrigger": "alerts",
    "alertdeliveryattempt": "alerts",
}


def labels_follow(apps, schema_editor, *, forward=True):
    """Content types (so permissions and admin history stay attached) and audit entries
    (which name their target "app.model") take the models' new app labels."""
    content_type = apps.get_model("contenttypes", "ContentType")
    audit_entry = apps.get_model("usage_portal", "AuditEntry")
    for model, app in MOVED.items():
        old, new = ("meters", app) if forward else (app, "meters")
        if not content_type.objects.filter(app_label=new, model=model).exists():
            content_type.objects.filter(app_label=old, model=model).update(app_label=new)
        audit_entry.objects.filter(target_type=f"{old}.{model}").update(
            target_type=f"{new}.{model}"
        )


def labels_return(apps, schema_editor):
    labels_follow(apps, schema_editor, forward=False)


class Migration(migrations.Migration):

    dependencies = [
        ("meters", "0008_event_identifier_binary_batch_brin"),
        ("usage_portal", "0002_auditentry"),
        ("customers", "0001_initial"),
        ("events", "0001_initial"),
        ("usage", "0001_initial"),
        ("alerts", "0001_initial"),
        ("billing", "0002_customers_app"),
        ("uploads", "0004_events_app"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RemoveField(
                    model_name='alertdeliveryattempt',
                    name='trigger',
                ),
                migrations.RemoveField(
                    model_name='auditentry',
                    name='actor',
                ),
                migrations.RemoveField(
                    model_name='meterevent',
                    name='customer',
                ),
                migrations.RemoveField(
                    model_name='usagerollup',
                    name='customer',
                ),
                migrations.RemoveField(
                    model_name='usagealerttrigger',
                    name='customer',
                ),
                migrations.RemoveField(
                    model_name='metermonthlyrollup',
                    name='customer',
                ),
                migrations.RemoveField(
                    model_name='meterdailyrollup',
                    name='customer',
                ),
                migrations.RemoveField(
                    model_name='usagealert',
                    name='customer',
                ),
                migrations.RemoveField(
                    model_name='eventbatch',
                    name='user',
                ),
                migrations.RemoveField(
                    model_name='meterevent',
                    name='batch',
                ),
                migrations.RemoveField(
                    model_name='eventrejection',
                    name='batch',
                ),
                migrations.RemoveField(
                    model_name='eventrejection',
                    name='meter',
                ),
                migrations.RemoveField(
                    model_name='meterdailyrollup',
                    name='meter',
                ),
                migrations.RemoveField(
                    model_name='meterevent',
                    name='cancelled_by',
                ),
                migrations.RemoveField(
                    model_name='meterevent',
                    name='meter',
                ),
                migrations.RemoveField(
                    model_name='metermonthlyrollup',
                    name='meter',
                ),
                migrations.RemoveField(
                    model_name='meterusagetotal',
                    name='meter',
                ),
                migrations.RemoveField(
                    model_name='staleusageday',
                    name='meter',
                ),
                migrations.DeleteModel(
                    name='StoredIdentifierSet',
                ),
                migrations.RemoveField(
                    model_name='usagealert',
                    name='created_by',
                ),
                migrations.RemoveField(
                    model_name='usagealert',
                    name='meter',
                ),
                migrations.RemoveField(
                    model_name='usagealerttrigger',
                    name='alert',
                ),
                migrations.RemoveField(
                    model_name='usagerollup',
                    name='meter',
                ),
                migrations.DeleteModel(
                    name='AlertDeliveryAttempt',
                ),
                migrations.DeleteModel(
                    name='AuditEntry',
                ),
                migrations.DeleteModel(
                    name='Customer',
                ),
                migrations.DeleteModel(
                    name='EventBatch',
                ),
                migrations.DeleteModel(
                    name='EventRejection',
                ),
                migrations.DeleteModel(
                    name='MeterDailyRollup',
                ),
                migrations.DeleteModel(
                    name='MeterEvent',
                ),
                migrations.DeleteModel(
                    name='MeterMonthlyRollup',
                ),
                migrations.DeleteModel(
                    name='MeterUsageTotal',
                ),
                migrations.DeleteModel(
                    name='StaleUsageDay',
                ),
                migrations.DeleteModel(
                    name='UsageAlert',
                ),
                migrations.DeleteModel(
                    name='UsageAlertTrigger',
                ),
                migrations.DeleteModel(
                    name='UsageRollup',
                ),
    
            ],
            database_operations=[],
        ),
        migrations.RunPython(labels_follow, labels_return),
    ]
