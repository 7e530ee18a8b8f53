"""Drop the indexes Django gave the user foreign keys on their own: each leads a unique constraint or
an index that serves the same lookups, and every index is one more write per settlement.
Only the indexes go, as in agents 0003: AlterField would re-validate each foreign key under a lock."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

from maschina.migration_ops import drop_index


def _user(related_name, on_delete=django.db.models.deletion.CASCADE):
    return models.ForeignKey(
        db_index=False, on_delete=on_delete, related_name=related_name, to=settings.AUTH_USER_MODEL
    )


class Migration(migrations.Migration):
    atomic = False  # DROP INDEX CONCURRENTLY (maschina.migration_ops.drop_index)

    dependencies = [
        ("billing", "0002_alert_last_attempt"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(model_name="alert", name="user", field=_user("alerts")),
                migrations.AlterField(
                    model_name="ledgerentry", name="user", field=_user("+", django.db.models.deletion.PROTECT)
                ),
                migrations.AlterField(model_name="modelusage", name="user", field=_user("+")),
                migrations.AlterField(model_name="usageperiod", name="user", field=_user("usage_periods")),
            ],
            database_operations=[
                drop_index("billing_alert", "user_id", "billing_alert_user_id_6b32d282"),
                drop_index("billing_ledgerentry", "user_id", "billing_ledgerentry_user_id_b10feb9b"),
                drop_index("billing_modelusage", "user_id", "billing_modelusage_user_id_5a17928e"),
                drop_index("billing_usageperiod", "user_id", "billing_usageperiod_user_id_3a541556"),
            ],
        ),
    ]
