import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0003_drop_covered_foreign_key_indexes"),
        ("runs", "0001_initial"),
    ]

    # The ledger's run now points at runs.Run: the same table, so state only.
    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="ledgerentry",
                    name="run",
                    field=models.OneToOneField(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="ledger_entry",
                        to="runs.run",
                    ),
                ),
            ],
            database_operations=[],
        ),
    ]
