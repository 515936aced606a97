"""Customer moves here from meters: its table keeps its name, so only the state changes."""

from django.db import migrations, models


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ('meters', '0008_event_identifier_binary_batch_brin'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name='Customer',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('external_id', models.CharField(max_length=255, verbose_name='ID')),
                        ('name', models.CharField(blank=True, max_length=255)),
                        ('email', models.EmailField(blank=True, max_length=254)),
                        ('metadata', models.JSONField(blank=True, default=dict)),
                        ('created', models.DateTimeField(auto_now_add=True)),
                    ],
                    options={
                        'db_table': 'meters_customer',
                        'ordering': ['external_id'],
                        'constraints': [models.UniqueConstraint(fields=('external_id',), name='customer_unique_external_id')],
                    },
                ),
    
            ],
            database_operations=[],
        ),
    ]
