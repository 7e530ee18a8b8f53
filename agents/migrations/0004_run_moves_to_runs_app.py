from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("agents", "0003_drop_covered_foreign_key_indexes"),
        ("billing", "0004_ledger_run_to_runs_app"),
        ("runs", "0001_initial"),
    ]

    # The run model now lives in the runs app, on the same table: state only.
    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RemoveField(model_name="run", name="agent"),
                migrations.RemoveField(model_name="run", name="user"),
                migrations.DeleteModel(name="Run"),
            ],
            database_operations=[],
        ),
    ]
