"""Daily and monthly rollups and totals move here from meters: their tables keep their names, so
only the state changes."""

import django.db.models.deletion
import usage_portal.fields
from django.db import migrations, models


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ('customers', '0001_initial'),
        ('meters', '0008_event_identifier_binary_batch_brin'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name='MeterDailyRollup',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('day', models.DateField()),
                        ('value_sum', usage_portal.fields.ExactDecimalField()),
                        ('event_count', models.BigIntegerField()),
                        ('last_value', usage_portal.fields.ExactDecimalField()),
                        ('last_timestamp', models.DateTimeField()),
                        ('last_event_id', models.BigIntegerField()),
                        ('customer', models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='customers.customer')),
                        ('meter', models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='meters.meter')),
                    ],
                    options={
                        'db_table': 'meters_meterdailyrollup',
                        'constraints': [models.UniqueConstraint(fields=('meter', 'day', 'customer'), name='dailyrollup_unique_meter_day_cust')],
                    },
                ),
                migrations.CreateModel(
                    name='MeterMonthlyRollup',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('month', models.DateField()),
                        ('value_sum', usage_portal.fields.ExactDecimalField()),
                        ('event_count', models.BigIntegerField()),
                        ('last_value', usage_portal.fields.ExactDecimalField()),
                        ('last_timestamp', models.DateTimeField()),
                        ('last_event_id', models.BigIntegerField()),
                        ('customer', models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='customers.customer')),
                        ('meter', models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='meters.meter')),
                    ],
                    options={
                        'db_table': 'meters_metermonthlyrollup',
                        'constraints': [models.UniqueConstraint(fields=('meter', 'month', 'customer'), name='monthlyrollup_unique_meter_month_c')],
                    },
                ),
                migrations.CreateModel(
                    name='MeterUsageTotal',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('grain', models.CharField(choices=[('hour', 'Hour'), ('day', 'Day')], max_length=4)),
                        ('start', models.DateTimeField()),
                        ('value_sum', usage_portal.fields.ExactDecimalField()),
                        ('event_count', models.BigIntegerField()),
                        ('last_sum', usage_portal.fields.ExactDecimalField()),
                        ('meter', models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='meters.meter')),
                    ],
                    options={
                        'db_table': 'meters_meterusagetotal',
                        'constraints': [models.UniqueConstraint(fields=('meter', 'grain', 'start'), name='usagetotal_unique_meter_grain_start'), models.CheckConstraint(condition=models.Q(('grain__in', ['hour', 'day'])), name='usagetotal_grain_valid')],
                    },
                ),
                migrations.CreateModel(
                    name='StaleUsageDay',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('day', models.DateField()),
                        ('meter', models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='meters.meter')),
                    ],
                    options={
                        'db_table': 'meters_staleusageday',
                        'indexes': [models.Index(fields=['meter', 'day'], name='staleday_meter_day')],
                    },
                ),
    
            ],
            database_operations=[],
        ),
    ]
