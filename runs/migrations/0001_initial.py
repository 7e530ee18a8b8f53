import uuid

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("agents", "0003_drop_covered_foreign_key_indexes"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    # The run model moves here from agents with its table as it is: state only, the database is untouched.
    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="Run",
                    fields=[
                        (
                            "id",
                            models.UUIDField(
                                default=uuid.uuid4, editable=False, primary_key=True, serialize=False
                            ),
                        ),
                        ("tier", models.CharField(max_length=32)),
                        (
                            "status",
                            models.CharField(
                                choices=[
                                    ("queued", "Queued"),
                                    ("executing", "Executing"),
                                    ("completed", "Completed"),
                                    ("failed", "Failed"),
                                    ("timed_out", "Timed Out"),
                                    ("canceled", "Canceled"),
                                ],
                                default="queued",
                                max_length=16,
                            ),
                        ),
                        ("requested_model", models.CharField(blank=True, max_length=200, null=True)),
                        ("model", models.CharField(max_length=200)),
                        ("catalog_model", models.CharField(max_length=200)),
                        ("provider", models.CharField(max_length=32)),
                        ("multiplier", models.DecimalField(decimal_places=4, max_digits=12)),
                        ("system_prompt", models.TextField()),
                        ("input", models.JSONField()),
                        ("output", models.JSONField(blank=True, null=True)),
                        ("timeout_secs", models.PositiveIntegerField()),
                        ("max_tokens", models.PositiveIntegerField()),
                        ("period", models.DateField()),
                        ("reserved_tokens", models.BigIntegerField()),
                        ("input_tokens", models.BigIntegerField(blank=True, null=True)),
                        ("output_tokens", models.BigIntegerField(blank=True, null=True)),
                        ("billed_tokens", models.BigIntegerField(blank=True, null=True)),
                        ("error", models.JSONField(blank=True, null=True)),
                        ("provider_calls", models.PositiveIntegerField(default=0)),
                        ("claim", models.UUIDField(blank=True, editable=False, null=True)),
                        ("claims", models.PositiveIntegerField(default=0)),
                        ("heartbeat_at", models.DateTimeField(blank=True, null=True)),
                        ("deadline_at", models.DateTimeField(blank=True, null=True)),
                        ("dispatches", models.PositiveIntegerField(default=0)),
                        ("redispatch_at", models.DateTimeField(blank=True, null=True)),
                        ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                        ("dispatched_at", models.DateTimeField(blank=True, null=True)),
                        ("started_at", models.DateTimeField(blank=True, null=True)),
                        ("finished_at", models.DateTimeField(blank=True, null=True)),
                        ("settled_at", models.DateTimeField(blank=True, null=True)),
                        (
                            "agent",
                            models.ForeignKey(
                                db_index=False,
                                null=True,
                                on_delete=django.db.models.deletion.SET_NULL,
                                related_name="runs",
                                to="agents.agent",
                            ),
                        ),
                        (
                            "user",
                            models.ForeignKey(
                                db_index=False,
                                on_delete=django.db.models.deletion.PROTECT,
                                related_name="runs",
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                    ],
                    options={
                        "db_table": "agents_run",
                        "ordering": ["-created_at", "-id"],
                        "indexes": [
                            models.Index(
                                fields=["user", "-created_at"], name="agents_run_user_id_4d9103_idx"
                            ),
                            models.Index(
                                fields=["agent", "-created_at"], name="agents_run_agent_i_736b2e_idx"
                            ),
                            models.Index(
                                condition=models.Q(("status__in", ("queued", "executing"))),
                                fields=["status", "created_at"],
                                name="run_active_idx",
                            ),
                            models.Index(
                                condition=models.Q(("status", "queued")),
                                fields=["redispatch_at"],
                                name="run_queued_redispatch_idx",
                            ),
                            models.Index(
                                condition=models.Q(("status", "executing")),
                                fields=["deadline_at"],
                                name="run_executing_deadline_idx",
                            ),
                        ],
                        "constraints": [
                            models.CheckConstraint(
                                condition=models.Q(
                                    (
                                        "status__in",
                                        [
                                            "queued",
                                            "executing",
                                            "completed",
                                            "failed",
                                            "timed_out",
                                            "canceled",
                                        ],
                                    )
                                ),
                                name="run_status_known",
                            ),
                            models.CheckConstraint(
                                condition=models.Q(("multiplier__gte", 0)), name="run_multiplier_gte_0"
                            ),
                            models.CheckConstraint(
                                condition=models.Q(("reserved_tokens__gte", 0)), name="run_reserved_gte_0"
                            ),
                            models.CheckConstraint(
                                condition=models.Q(
                                    models.Q(
                                        ("input_tokens__gte", 0),
                                        ("input_tokens__isnull", True),
                                        _connector="OR",
                                    ),
                                    models.Q(
                                        ("output_tokens__gte", 0),
                                        ("output_tokens__isnull", True),
                                        _connector="OR",
                                    ),
                                    models.Q(
                                        ("billed_tokens__gte", 0),
                                        ("billed_tokens__isnull", True),
                                        _connector="OR",
                                    ),
                                ),
                                name="run_usage_gte_0",
                            ),
                            models.CheckConstraint(
                                condition=models.Q(
                                    ("settled_at__isnull", True),
                                    ("status__in", ("completed", "failed", "timed_out", "canceled")),
                                    _connector="OR",
                                ),
                                name="run_settled_only_when_terminal",
                            ),
                        ],
                    },
                ),
            ],
            database_operations=[],
        ),
    ]
