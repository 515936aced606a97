"""Batches, events, rejections, identifier sets and hourly rollups move here from meters: their
tables keep their names, so only the state changes."""

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
                    name='EventBatch',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('source', models.CharField(choices=[('manual', 'Manual entry'), ('csv', 'CSV upload'), ('api', 'API'), ('s3', 'S3 import')], max_length=6)),
                        ('dry_run', models.BooleanField(default=False)),
                        ('created', models.DateTimeField(auto_now_add=True)),
                        ('user', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, to=settings.AUTH_USER_MODEL)),
                    ],
                    options={
                        'verbose_name_plural': 'event batches',
                        'db_table': 'meters_eventbatch',
                    },
                ),
                migrations.CreateModel(
                    name='StoredIdentifierSet',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('digest', models.CharField(max_length=64)),
                        ('events', models.PositiveIntegerField()),
                        ('created', models.DateTimeField(auto_now_add=True)),
                    ],
                    options={
                        'db_table': 'meters_storedidentifierset',
                        'constraints': [models.UniqueConstraint(fields=('digest',), name='storedidentifierset_unique_digest')],
                    },
                ),
                migrations.CreateModel(
                    name='EventRejection',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('line', models.PositiveIntegerField(blank=True, null=True)),
                        ('column', models.CharField(blank=True, max_length=255)),
                        ('code', models.CharField(max_length=64)),
                        ('message', models.TextField()),
                        ('identifier', models.CharField(blank=True, max_length=255)),
                        ('event_name', models.CharField(blank=True, max_length=255)),
                        ('customer_ref', models.CharField(blank=True, max_length=255)),
                        ('raw', models.JSONField(default=dict)),
                        ('created', models.DateTimeField(auto_now_add=True)),
                        ('batch', models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='rejections', to='events.eventbatch')),
                        ('meter', models.ForeignKey(blank=True, db_index=False, null=True, on_delete=django.db.models.deletion.SET_NULL, to='meters.meter')),
                    ],
                    options={
                        'db_table': 'meters_eventrejection',
                        'indexes': [models.Index(fields=['batch', 'line'], name='rejection_batch_line'), models.Index(fields=['meter', 'created'], name='rejection_meter_created')],
                    },
                ),
                migrations.CreateModel(
                    name='MeterEvent',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('identifier', models.CharField(db_collation='BINARY', max_length=100)),
                        ('timestamp', models.DateTimeField()),
                        ('value', usage_portal.fields.ExactDecimalField()),
                        ('payload', models.JSONField(default=dict)),
                        ('line', models.PositiveIntegerField(blank=True, null=True)),
                        ('received_at', models.DateTimeField()),
                        ('superseded', models.BooleanField(default=False)),
                        ('cancelled_at', models.DateTimeField(blank=True, null=True)),
                        ('batch', models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='events', to='events.eventbatch')),
                        ('cancelled_by', models.ForeignKey(blank=True, db_index=False, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to=settings.AUTH_USER_MODEL)),
                        ('customer', models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='events', to='customers.customer')),
                        ('meter', models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='events', to='meters.meter')),
                    ],
                    options={
                        'db_table': 'meters_meterevent',
                        'indexes': [models.Index(fields=['meter', 'customer', 'timestamp'], name='event_meter_cust_ts')],
                        'constraints': [models.UniqueConstraint(fields=('identifier',), name='meterevent_unique_identifier')],
                    },
                ),
                migrations.CreateModel(
                    name='UsageRollup',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('hour', models.DateTimeField()),
                        ('value_sum', usage_portal.fields.ExactDecimalField()),
                        ('event_count', models.BigIntegerField()),
                        ('last_value', usage_portal.fields.ExactDecimalField(null=True)),
                        ('last_timestamp', models.DateTimeField(null=True)),
                        ('last_event_id', models.BigIntegerField(null=True)),
                        ('customer', models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='customers.customer')),
                        ('meter', models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='meters.meter')),
                    ],
                    options={
                        'db_table': 'meters_usagerollup',
                        'indexes': [models.Index(fields=['meter', 'hour'], name='rollup_meter_hour')],
                        'constraints': [models.UniqueConstraint(fields=('meter', 'customer', 'hour'), name='rollup_unique_meter_customer_hour')],
                    },
                ),
    
            ],
            database_operations=[],
        ),
    ]
