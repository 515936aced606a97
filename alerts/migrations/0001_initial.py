"""Usage alerts move here from meters: their tables keep their names, so only the state changes."""

import alerts.models
import django.db.models.deletion
import usage_portal.fields
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ('customers', '0001_initial'),
        ('meters', '0008_event_identifier_binary_batch_brin'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name='UsageAlert',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('alert_id', models.CharField(default=alerts.models.new_alert_id, editable=False, max_length=40, verbose_name='ID')),
                        ('title', models.CharField(max_length=256)),
                        ('threshold', usage_portal.fields.ExactDecimalField()),
                        ('status', models.CharField(choices=[('active', 'Active'), ('inactive', 'Inactive'), ('archived', 'Archived')], default='active', max_length=8)),
                        ('webhook_url', models.URLField(blank=True, max_length=2000)),
                        ('webhook_secret', models.CharField(default=alerts.models.new_webhook_secret, editable=False, max_length=80)),
                        ('created', models.DateTimeField(auto_now_add=True)),
                        ('updated', models.DateTimeField(auto_now=True)),
                        ('created_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                        ('customer', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='alerts', to='customers.customer')),
                        ('meter', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='alerts', to='meters.meter')),
                    ],
                    options={
                        'db_table': 'meters_usagealert',
                        'ordering': ['-created', '-id'],
                    },
                ),
                migrations.CreateModel(
                    name='UsageAlertTrigger',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('value', usage_portal.fields.ExactDecimalField()),
                        ('period_start', models.DateTimeField()),
                        ('triggered_at', models.DateTimeField()),
                        ('delivery_status', models.CharField(choices=[('none', 'No webhook'), ('pending', 'Pending'), ('delivered', 'Delivered'), ('failed', 'Failed')], max_length=9)),
                        ('delivered_at', models.DateTimeField(blank=True, null=True)),
                        ('alert', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='triggers', to='alerts.usagealert')),
                        ('customer', models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='alert_triggers', to='customers.customer')),
                    ],
                    options={
                        'db_table': 'meters_usagealerttrigger',
                        'ordering': ['-triggered_at', '-id'],
                    },
                ),
                migrations.CreateModel(
                    name='AlertDeliveryAttempt',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('attempt', models.PositiveIntegerField()),
                        ('at', models.DateTimeField()),
                        ('url', models.URLField(max_length=2000)),
                        ('status_code', models.PositiveIntegerField(blank=True, null=True)),
                        ('succeeded', models.BooleanField()),
                        ('error', models.TextField(blank=True)),
                        ('response_excerpt', models.TextField(blank=True)),
                        ('duration_ms', models.PositiveIntegerField()),
                        ('trigger', models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='attempts', to='alerts.usagealerttrigger')),
                    ],
                    options={
                        'db_table': 'meters_alertdeliveryattempt',
                        'ordering': ['trigger', 'attempt'],
                    },
                ),
                migrations.AddIndex(
                    model_name='usagealert',
                    index=models.Index(fields=['meter', 'status'], name='usagealert_meter_status'),
                ),
                migrations.AddConstraint(
                    model_name='usagealert',
                    constraint=models.UniqueConstraint(fields=('alert_id',), name='usagealert_unique_alert_id'),
                ),
                migrations.AddConstraint(
                    model_name='usagealert',
                    constraint=models.CheckConstraint(condition=models.Q(('status__in', ['active', 'inactive', 'archived'])), name='usagealert_status_valid'),
                ),
                migrations.AddIndex(
                    model_name='usagealerttrigger',
                    index=models.Index(fields=['customer', '-triggered_at'], name='alerttrigger_customer'),
                ),
                migrations.AddIndex(
                    model_name='usagealerttrigger',
                    index=models.Index(fields=['-triggered_at'], name='alerttrigger_triggered_at'),
                ),
                migrations.AddConstraint(
                    model_name='usagealerttrigger',
                    constraint=models.UniqueConstraint(fields=('alert', 'customer'), name='alerttrigger_unique_alert_customer'),
                ),
                migrations.AddConstraint(
                    model_name='alertdeliveryattempt',
                    constraint=models.UniqueConstraint(fields=('trigger', 'attempt'), name='alertattempt_unique_trigger_attempt'),
                ),
    
            ],
            database_operations=[],
        ),
    ]
