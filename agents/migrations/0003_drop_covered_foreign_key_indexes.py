"""Drop the indexes Django gave three foreign keys on their own: each leads a composite index that
serves the same lookups, and every index is one more write on each INSERT and UPDATE of a run (three
per run). Only the indexes go (SeparateDatabaseAndState): Django's AlterField would also drop
and re-add each foreign key constraint, re-validating every row of the table under a lock."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

from maschina.migration_ops import drop_index


class Migration(migrations.Migration):
    atomic = False  # DROP INDEX CONCURRENTLY (maschina.migration_ops.drop_index)

    dependencies = [
        ("agents", "0002_run_deadline_and_dispatches"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="agent",
                    name="owner",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="agents",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                migrations.AlterField(
                    model_name="run",
                    name="agent",
                    field=models.ForeignKey(
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="runs",
                        to="agents.agent",
                    ),
                ),
                migrations.AlterField(
                    model_name="run",
                    name="user",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="runs",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            database_operations=[
                drop_index("agents_agent", "owner_id", "agents_agent_owner_id_9d2afb92"),
                drop_index("agents_run", "agent_id", "agents_run_agent_id_3247e811"),
                drop_index("agents_run", "user_id", "agents_run_user_id_a4ab8522"),
            ],
        ),
    ]
