"""The batch foreign key follows EventBatch to the events app; the column stays as it is."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('events', '0001_initial'),
        ('uploads', '0003_committed_ranges'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name='upload',
                    name='batch',
                    field=models.OneToOneField(on_delete=django.db.models.deletion.PROTECT, related_name='upload', to='events.eventbatch'),
                ),
    
            ],
            database_operations=[],
        ),
    ]
