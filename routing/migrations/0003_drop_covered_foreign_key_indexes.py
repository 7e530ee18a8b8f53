"""The tier foreign key leads the unique (tier, model): its own indexes go. A table of a few rows,
so Django's AlterField (which also re-adds the foreign key) is fine here."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("routing", "0002_seed_catalog"),
    ]

    operations = [
        migrations.AlterField(
            model_name="tiermodelrule",
            name="tier",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="rules",
                to="routing.tier",
            ),
        ),
    ]
