"""The audit trail moves here from meters: its table keeps its name, so only the state changes."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ('usage_portal', '0001_roles'),
        ('meters', '0008_event_identifier_binary_batch_brin'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name='AuditEntry',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('target_type', models.CharField(max_length=40)),
                        ('target_id', models.CharField(max_length=255)),
                        ('action', models.CharField(choices=[('create', 'Created'), ('update', 'Changed'), ('deactivate', 'Deactivated'), ('reactivate', 'Reactivated'), ('import', 'Imported'), ('upload', 'Uploaded'), ('cancel', 'Cancelled'), ('revert', 'Reverted')], max_length=20)),
                        ('at', models.DateTimeField(auto_now_add=True)),
                        ('changes', models.JSONField(blank=True, default=dict)),
                        ('actor', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, to=settings.AUTH_USER_MODEL)),
                    ],
                    options={
                        'verbose_name_plural': 'audit entries',
                        'db_table': 'meters_auditentry',
                        'ordering': ['-at', '-id'],
                        'indexes': [models.Index(fields=['target_type', 'target_id', '-at'], name='audit_target')],
                    },
                ),
    
            ],
            database_operations=[],
        ),
    ]
